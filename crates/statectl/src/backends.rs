//! Which backends this binary can open, and which URL a command uses.

use state_core::{Registry, StateUrl};

use crate::error::CliError;

/// The store used when neither `--url` nor `$STATE_URL` is given.
pub const DEFAULT_URL: &str = "redb:.statectl/state.redb";

/// The composition root: every backend and lock service linked into statectl (the
/// facade's, with all its features), through which statectl opens everything.
pub fn registry() -> Registry {
    distributed_state::registry()
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
