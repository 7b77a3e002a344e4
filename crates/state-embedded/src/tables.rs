//! The tables of a redb file and their layout version: the definitions, their creation on
//! open, and the earliest expiry in the index.

use std::path::Path;

use redb::{Database, ReadableTable, Table, TableDefinition};
use state_core::{Result, StateError};

use crate::error::redb;
use crate::record::split_expiry_key;

/// Full key (prefix ++ key) → encoded record.
pub(crate) const DATA: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("state_data");
/// `expires_at_ms ++ full key` → (), for the sweep.
pub(crate) const EXPIRY: TableDefinition<'_, &[u8], ()> = TableDefinition::new("state_expiry");
/// Full key → the highest fencing token that wrote it.
pub(crate) const FENCES: TableDefinition<'_, &[u8], u64> = TableDefinition::new("state_fences");
/// `format` → the layout version of the tables above.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("state_meta");
const FORMAT: u64 = 1;

pub(crate) type DataTable<'t> = Table<'t, &'static [u8], &'static [u8]>;
pub(crate) type ExpiryTable<'t> = Table<'t, &'static [u8], ()>;
pub(crate) type FenceTable<'t> = Table<'t, &'static [u8], u64>;

/// Creates the tables, checks the layout version, and returns the earliest indexed expiry.
pub(crate) fn init_tables(db: &Database, path: &Path) -> Result<u64> {
    let txn = db
        .begin_write()
        .map_err(|e| redb("begin a write transaction", e))?;
    let next_expiry = {
        let mut meta = txn
            .open_table(META)
            .map_err(|e| redb("open the meta table", e))?;
        let format = meta
            .get("format")
            .map_err(|e| redb("read the format version", e))?
            .map(|g| g.value());
        match format {
            Some(FORMAT) => {}
            None => {
                meta.insert("format", FORMAT)
                    .map_err(|e| redb("write the format version", e))?;
            }
            Some(other) => {
                return Err(StateError::corrupt(format!(
                    "{} has state-embedded format {other}; this build reads format {FORMAT}: \
                     open it with the version that wrote it",
                    path.display()
                )));
            }
        }
        txn.open_table(DATA)
            .map_err(|e| redb("open the data table", e))?;
        txn.open_table(FENCES)
            .map_err(|e| redb("open the fences table", e))?;
        let expiry = txn
            .open_table(EXPIRY)
            .map_err(|e| redb("open the expiry index", e))?;
        first_expiry(&expiry)?
    };
    txn.commit()
        .map_err(|e| redb("commit the table creation", e))?;
    Ok(next_expiry)
}

fn first_expiry(table: &ExpiryTable<'_>) -> Result<u64> {
    let first = table
        .first()
        .map_err(|e| redb("read the expiry index", e))?;
    match first {
        Some((key, _)) => Ok(split_expiry_key(key.value())?.0),
        None => Ok(u64::MAX),
    }
}
