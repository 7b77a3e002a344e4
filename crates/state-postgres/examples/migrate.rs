//! Applies the state-postgres migrations: what `cargo xtask migrate --url URL` runs.
//!
//! ```text
//! cargo run -p state-postgres --example migrate -- --url 'postgres://postgres@127.0.0.1/test?schema=app'
//! ```
//! The URL may also come from `STATE_MIGRATE_URL` (so a password stays off the command
//! line). `schema=` and `table=` pick what to migrate.

use state_postgres::PostgresConfig;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut url = std::env::var("STATE_MIGRATE_URL").ok();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--url" => url = args.next(),
            other if other.starts_with("--url=") => url = Some(other["--url=".len()..].into()),
            _ => fail(&format!(
                "unknown argument `{arg}`; usage: migrate --url URL"
            )),
        }
    }
    let Some(url) = url else {
        fail("no database given; use --url postgres://user@host:port/db or STATE_MIGRATE_URL");
    };
    let config = PostgresConfig::from_url(&url).unwrap_or_else(|e| fail(&e.to_string()));
    match state_postgres::migrate(&config).await {
        Ok(applied) if applied.is_empty() => {
            println!("{}: up to date", target(&config));
        }
        Ok(applied) => {
            for m in applied {
                println!("{}: applied V{}__{}", target(&config), m.version, m.name);
            }
        }
        Err(e) => fail(&e.to_string()),
    }
}

fn target(config: &PostgresConfig) -> String {
    format!(
        "{} schema {} table {}",
        config.redacted_url(),
        config.schema(),
        config.table()
    )
}

fn fail(message: &str) -> ! {
    eprintln!("migrate: {message}");
    std::process::exit(1);
}
