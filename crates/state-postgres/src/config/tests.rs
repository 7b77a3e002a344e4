use super::validate::MAX_TABLE_NAME_LEN;
use super::*;
use state_core::{ErrorKind, Result};

fn config_err(result: Result<PostgresConfig>) -> String {
    match result {
        Ok(c) => panic!("expected a config error, got {c:?}"),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Config, "{e}");
            e.to_string()
        }
    }
}

#[test]
fn url_parameters_are_read() -> Result<()> {
    let c = PostgresConfig::from_url(
        "postgresql://me:pw@db:6543/app?sslmode=verify-full&sslrootcert=/ca.pem&table=ev\
         &schema=st&pool_max=7&pool_min=2&prefix=p:&ttl=30s&statement_timeout=2s",
    )?;
    assert_eq!((c.host.as_str(), c.port), ("db", 6543));
    assert_eq!(c.database.as_deref(), Some("app"));
    assert_eq!(c.ssl_mode(), "verify-full");
    assert_eq!(c.ssl_root_cert, Some(PathBuf::from("/ca.pem")));
    assert_eq!((c.schema(), c.table()), ("st", "ev"));
    assert_eq!(c.pool_size(), (2, 7));
    assert_eq!(c.key_prefix(), b"p:");
    assert_eq!(c.default_ttl, Some(Duration::from_secs(30)));
    assert_eq!(c.statement_timeout, Duration::from_secs(2));
    Ok(())
}

#[test]
fn bad_urls_and_options_name_the_field() {
    assert!(config_err(PostgresConfig::from_url("postgres://h/db?colour=red")).contains("colour"));
    assert!(
        config_err(PostgresConfig::from_url("postgres://h/db?sslmode=maybe")).contains("sslmode")
    );
    assert!(
        config_err(PostgresConfig::from_url("postgres://h/db?table=Bad-Name")).contains("table")
    );
    assert!(
        config_err(PostgresConfig::from_url("postgres://h/db?schema=x;drop")).contains("schema")
    );
    assert!(
        config_err(PostgresConfig::from_url("postgres://h/db?pool_max=0")).contains("pool_max")
    );
    assert!(
        config_err(PostgresConfig::from_url("postgres://h/db?pool_max=x")).contains("pool_max")
    );
    assert!(config_err(PostgresConfig::from_url("postgres://h/db?ttl=0s")).contains("default_ttl"));
    assert!(config_err(PostgresConfig::from_url("redis://h")).contains("postgres://"));
    let long = "t".repeat(MAX_TABLE_NAME_LEN + 1);
    assert!(
        config_err(PostgresConfig::from_url(&format!(
            "postgres://h/d?table={long}"
        )))
        .contains("limit")
    );
}

#[test]
fn builder_errors_are_deferred_to_validate() {
    let c = PostgresConfig::new("postgres://h/db").with_ssl_mode("sometimes");
    assert!(c.validate().is_err());
    let c = PostgresConfig::new("postgres://h/db").with_pool_size(5, 2);
    assert!(
        c.validate()
            .is_err_and(|e| e.message().contains("pool_min"))
    );
    let c = PostgresConfig::new("not a url");
    assert!(c.validate().is_err_and(|e| e.kind() == ErrorKind::Config));
    let c = PostgresConfig::new("postgres://h/db").with_table("ok_name");
    assert!(c.validate().is_ok());
}

#[test]
fn coalescing_is_capped_by_pool_max() -> Result<()> {
    let c = PostgresConfig::from_url("postgres://h/db?pool_max=8&coalesce=3")?;
    assert_eq!(c.coalescing(), 3);
    assert_eq!(
        PostgresConfig::from_url("postgres://h/db?coalesce=0")?.coalescing(),
        0
    );
    // The default follows a small pool down instead of failing.
    let c = PostgresConfig::from_url("postgres://h/db?pool_max=1")?;
    assert_eq!(c.coalescing(), 1);
    assert_eq!(PostgresConfig::default().coalescing(), DEFAULT_COALESCE);
    // An explicit value above pool_max is an error naming the field.
    let err = config_err(PostgresConfig::from_url(
        "postgres://h/db?pool_max=2&coalesce=3",
    ));
    assert!(
        err.contains("coalesce (3)") && err.contains("pool_max"),
        "{err}"
    );
    let c = PostgresConfig::new("postgres://h/db")
        .with_pool_size(1, 4)
        .with_coalescing(5);
    assert!(
        c.validate()
            .is_err_and(|e| e.kind() == ErrorKind::Config && e.message().contains("coalesce"))
    );
    assert!(
        config_err(PostgresConfig::from_url("postgres://h/db?coalesce=-1")).contains("coalesce")
    );
    Ok(())
}

#[test]
fn debug_never_shows_the_password() {
    let c = PostgresConfig::new("postgres://admin:hunter2@h:5432/db?sslmode=require");
    let shown = format!("{c:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("admin:***@h:5432/db"), "{shown}");
    assert!(!c.redacted_url().contains("hunter2"));
}
