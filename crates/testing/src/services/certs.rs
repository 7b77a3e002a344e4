//! [`TestCerts`]: a throwaway CA with a server and a client certificate, made with the
//! `openssl` command, for TLS tests against [`LocalRedis`](super::LocalRedis) and
//! [`LocalPostgres`](super::LocalPostgres).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ServiceError;
use super::process;

/// A CA, a server certificate for `localhost` / `127.0.0.1`, and a client certificate (CN
/// `client`), all ECDSA P-256 PEM files in a temporary directory removed on drop.
#[derive(Debug)]
pub struct TestCerts {
    dir: tempfile::TempDir,
}

impl TestCerts {
    /// Generates the files (bounded in time; needs `openssl` on `PATH`).
    pub async fn generate() -> Result<TestCerts, ServiceError> {
        if process::on_path("openssl").is_none() {
            return Err(ServiceError::new(
                "openssl is not on PATH; install it (e.g. `apt-get install openssl`)",
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("state-certs-")
            .tempdir()
            .map_err(|e| ServiceError::new(format!("cannot create a temp dir: {e}")))?;
        let certs = TestCerts { dir };
        certs
            .openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "3",
                "-subj",
                "/CN=state-test-ca",
            ])
            .await?;
        certs
            .leaf(
                "server",
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth",
            )
            .await?;
        certs
            .leaf(
                "client",
                "subjectAltName=DNS:client\nextendedKeyUsage=clientAuth",
            )
            .await?;
        Ok(certs)
    }

    async fn leaf(&self, name: &str, extensions: &str) -> Result<(), ServiceError> {
        let ext = self.dir.path().join(format!("{name}.ext"));
        let text = format!(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n{extensions}\n"
        );
        std::fs::write(&ext, text)
            .map_err(|e| ServiceError::new(format!("cannot write {}: {e}", ext.display())))?;
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ])
        .await?;
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "3",
            "-extfile",
            &format!("{name}.ext"),
        ])
        .await?;
        Ok(())
    }

    async fn openssl(&self, args: &[&str]) -> Result<(), ServiceError> {
        let mut cmd = tokio::process::Command::new("openssl");
        cmd.current_dir(self.dir.path()).args(args);
        process::run(&mut cmd, Duration::from_secs(30))
            .await
            .map(drop)
    }

    /// The directory holding every file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate (trust this to verify the server or the client).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The server certificate (SAN `localhost` and `127.0.0.1`).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    /// The server's private key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// The client certificate (CN `client`).
    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.crt")
    }

    /// The client's private key.
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// The contents of one of the files, e.g. to place it with
    /// [`LocalPostgresOptions::files`](super::LocalPostgresOptions::files).
    pub fn read(&self, path: &Path) -> Result<Vec<u8>, ServiceError> {
        std::fs::read(path)
            .map_err(|e| ServiceError::new(format!("cannot read {}: {e}", path.display())))
    }
}
