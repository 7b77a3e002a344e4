//! `cargo xtask migrate --url URL`: applies the state-postgres migrations.
//!
//! xtask stays free of database clients: it runs the `migrate` example of state-postgres,
//! handing it the URL through `STATE_MIGRATE_URL` so a password never shows in a process
//! list or in the command printed here.

use std::process::Stdio;

use anyhow::{Context, Result, bail};

use crate::util;

const USAGE: &str = "usage: cargo xtask migrate --url 'postgres://user@host:port/db[?schema=S&table=T]' \
                     (or set STATE_MIGRATE_URL)";

/// Applies the PostgreSQL migrations to the database at `--url`.
pub fn run(args: &[String]) -> Result<()> {
    let mut url = std::env::var("STATE_MIGRATE_URL").ok();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--url" => url = rest.next().cloned(),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => match other.strip_prefix("--url=") {
                Some(value) => url = Some(value.to_string()),
                None => bail!("unknown argument `{other}`; {USAGE}"),
            },
        }
    }
    let Some(url) = url.filter(|u| !u.trim().is_empty()) else {
        bail!("no database URL; {USAGE}");
    };
    println!(
        "$ STATE_MIGRATE_URL={} cargo run -q -p state-postgres --example migrate",
        redact(&url)
    );
    let status = util::cargo()
        .args(["run", "-q", "-p", "state-postgres", "--example", "migrate"])
        .env("STATE_MIGRATE_URL", &url)
        .stdin(Stdio::null())
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("the migrations were not applied (see the message above)");
    }
    Ok(())
}

/// The URL with the password between `user:` and `@` replaced by `***`.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let after = &url[scheme_end + 3..];
    let authority_end = after.find(['/', '?']).unwrap_or(after.len());
    let authority = &after[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &url[scheme_end + 3 + at..]
        ),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:p@ss@h:1/db?x=1"),
            "postgres://u:***@h:1/db?x=1"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h:5432/db"), "postgres://h:5432/db");
    }
}
