//! Which backends this binary can open, and which URL a command uses.

use state_core::{Registry, StateUrl};

use crate::error::CliError;

/// The store used when neither `--url` nor `$STATE_URL` is given.
pub const DEFAULT_URL: &str = "redb:.statectl/state.redb";

/// Every backend linked into statectl. Adding one is a line here and one in Cargo.toml.
pub fn registry() -> Registry {
    let mut registry = Registry::new(); // memory://
    state_embedded::register(&mut registry);
    state_redis::register(&mut registry);
    state_postgres::register(&mut registry);
    registry
}

/// The URL to open: `--url` (or `$STATE_URL`, which clap already folded in), else the
/// default embedded store, whose directory is created on first use.
pub fn resolve(url: Option<&str>) -> Result<StateUrl, CliError> {
    match url {
        Some(url) => Ok(StateUrl::parse(url)?),
        None => {
            std::fs::create_dir_all(".statectl").map_err(|e| {
                CliError::Usage(format!(
                    "cannot create the default store directory .statectl ({e}); \
                     pass --url or set STATE_URL"
                ))
            })?;
            Ok(StateUrl::parse(DEFAULT_URL)?)
        }
    }
}
