//! [`LocalPrometheus`]: Debian's `prometheus` server on a free loopback port, scraping the
//! targets and evaluating the rules a test gives it, queried over its HTTP API.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::process::{self, ServerProcess};
use super::{ServiceError, percent_encode};

/// How long Prometheus may take to answer `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One `prometheus` process with its own configuration and storage in a temporary
/// directory; killed on drop.
#[derive(Debug)]
pub struct LocalPrometheus {
    port: u16,
    server: ServerProcess,
    _dir: tempfile::TempDir,
}

impl LocalPrometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, path `/metrics`) and evaluating
    /// `rules` (YAML rule files, by name), both every `interval`, and waits until it is
    /// ready.
    pub async fn start(
        targets: &[String],
        rules: &[(&str, String)],
        interval: Duration,
    ) -> Result<LocalPrometheus, ServiceError> {
        let binary = process::on_path("prometheus").ok_or_else(|| {
            ServiceError::new(
                "prometheus is not installed: run `cargo xtask services up` (it installs \
                 Debian's prometheus package as root) or `apt-get install prometheus`",
            )
        })?;
        let dir = tempfile::tempdir()
            .map_err(|e| ServiceError::new(format!("cannot make a temporary directory: {e}")))?;
        let every = format!("{}ms", interval.as_millis().max(1));
        let mut config = format!(
            "global:\n  scrape_interval: {every}\n  evaluation_interval: {every}\n\
             rule_files:\n"
        );
        for (name, contents) in rules {
            write(dir.path(), name, contents)?;
            config.push_str(&format!("  - {name}\n"));
        }
        let quoted: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        config.push_str(&format!(
            "scrape_configs:\n  - job_name: state\n    static_configs:\n      - targets: [{}]\n",
            quoted.join(", ")
        ));
        write(dir.path(), "prometheus.yml", &config)?;
        let port = process::free_port()?;
        let log = dir.path().join("prometheus.log");
        let script = format!(
            "exec {} --config.file={} --storage.tsdb.path={} --web.listen-address=127.0.0.1:{port} \
             2> {}",
            process::sh_quote(&binary.to_string_lossy()),
            process::sh_quote(&dir.path().join("prometheus.yml").to_string_lossy()),
            process::sh_quote(&dir.path().join("data").to_string_lossy()),
            process::sh_quote(&log.to_string_lossy()),
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script]);
        let server = ServerProcess::spawn(cmd, log.clone())?;
        let prometheus = LocalPrometheus {
            port,
            server,
            _dir: dir,
        };
        process::wait_for(
            "prometheus to be ready",
            READY_TIMEOUT,
            Some(&log),
            || async {
                let ready = get(prometheus.port, "/-/ready").await;
                ready.ok().filter(|(status, _)| *status == 200).map(|_| ())
            },
        )
        .await?;
        Ok(prometheus)
    }

    /// The base URL of its web API.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// The `data` of an instant query (`/api/v1/query`), as JSON.
    pub async fn query(&self, promql: &str) -> Result<serde_json::Value, ServiceError> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        self.api(&path).await
    }

    /// The `data.alerts` of `/api/v1/alerts`: every pending or firing alert.
    pub async fn alerts(&self) -> Result<serde_json::Value, ServiceError> {
        let data = self.api("/api/v1/alerts").await?;
        Ok(data["alerts"].clone())
    }

    async fn api(&self, path: &str) -> Result<serde_json::Value, ServiceError> {
        let (status, body) = get(self.port, path).await?;
        let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| {
            ServiceError::new(format!(
                "prometheus {path} answered {status}, not JSON: {e}"
            ))
        })?;
        if json["status"] != "success" {
            return Err(ServiceError::new(format!("prometheus {path}: {body}")));
        }
        Ok(json["data"].clone())
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> Result<(), ServiceError> {
    std::fs::write(dir.join(name), contents)
        .map_err(|e| ServiceError::new(format!("cannot write {name}: {e}")))
}

/// One HTTP/1.1 GET to 127.0.0.1:`port` with `Connection: close`: the status and body.
async fn get(port: u16, path: &str) -> Result<(u16, String), ServiceError> {
    let failed = |e: std::io::Error| ServiceError::new(format!("GET {path} on :{port}: {e}"));
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<Vec<u8>, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| ServiceError::new(format!("GET {path} on :{port} timed out")))?
        .map_err(failed)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// The body of a chunked response.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    out
}

/// Runs Prometheus's `promtool ARGS` in `dir` with `stdin` on its standard input (for
/// `check metrics`), and returns its output; a failure quotes what promtool said.
pub fn promtool(dir: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, ServiceError> {
    use std::io::Write as _;
    use std::process::Stdio;

    let shown = format!("promtool {}", args.join(" "));
    let mut child = Command::new("promtool")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            ServiceError::new(format!(
                "cannot run {shown} ({e}): run `cargo xtask services up` (it installs Debian's \
                 prometheus package, which ships promtool)"
            ))
        })?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.unwrap_or_default().as_bytes())
            .map_err(|e| ServiceError::new(format!("cannot feed {shown}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| ServiceError::new(format!("{shown} did not finish: {e}")))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(said)
    } else {
        Err(ServiceError::new(format!("{shown} failed: {said}")))
    }
}
