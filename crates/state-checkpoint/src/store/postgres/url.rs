//! The URL of a [`PostgresCheckpointStore`]: the driver's part, the schema and table,
//! and how messages show it (never with the user or password).

use state_core::{Result, StateError};

use super::PostgresCheckpointStore;

/// The query parameters of a store URL passed on to the driver; any other is refused
/// (the driver would ignore a misspelt one silently).
const DRIVER_PARAMS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "application_name",
    "host",
    "port",
    "dbname",
    "user",
    "options",
];

/// A store URL taken apart. No `Debug`: the driver's URL may hold the password.
pub(super) struct StoreUrl {
    /// The URL for the driver: without `schema` and `table`.
    pub(super) driver_url: String,
    pub(super) schema: String,
    pub(super) table: String,
    /// `postgres://host:port/database?schema=S&table=T`: no user, no password.
    pub(super) place: String,
}

impl StoreUrl {
    pub(super) fn parse(url: &str) -> Result<Self> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(StateError::config(
                "a PostgreSQL checkpoint store URL looks like \
                 postgres://user@host:5432/database?schema=S&table=T",
            ));
        };
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "postgres" && scheme != "postgresql" {
            return Err(StateError::config(format!(
                "{scheme}://… is not a PostgreSQL checkpoint store URL (postgres://…)"
            )));
        }
        if rest.contains('#') {
            return Err(StateError::config(
                "a PostgreSQL checkpoint store URL has no #fragment",
            ));
        }
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        // The user and password end at the last `@` before the path.
        let (authority, path) = location.split_once('/').unwrap_or((location, ""));
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        let (mut schema, mut table) = (
            PostgresCheckpointStore::DEFAULT_SCHEMA.to_string(),
            PostgresCheckpointStore::DEFAULT_TABLE.to_string(),
        );
        let mut passed = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "schema" => schema = identifier("schema", value)?,
                "table" => table = identifier("table", value)?,
                // The password is the driver's business and never repeated.
                "password" => passed.push(pair),
                key if DRIVER_PARAMS.contains(&key) => passed.push(pair),
                key => {
                    let shown: String = key
                        .chars()
                        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                        .take(40)
                        .collect();
                    return Err(StateError::config(format!(
                        "`{shown}` is not a parameter of a PostgreSQL checkpoint store URL; it \
                         takes schema=, table= and the driver's sslmode=, sslrootcert=, \
                         application_name=…"
                    )));
                }
            }
        }
        let mut driver_url = format!("{scheme}://{location}");
        if !passed.is_empty() {
            driver_url.push('?');
            driver_url.push_str(&passed.join("&"));
        }
        let place = format!("postgres://{host}/{path}?schema={schema}&table={table}");
        Ok(StoreUrl {
            driver_url,
            schema,
            table,
            place,
        })
    }
}

/// `value` if it is a plain identifier, which needs no escaping when quoted.
fn identifier(what: &str, value: &str) -> Result<String> {
    let mut chars = value.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && value.len() <= 63;
    if plain {
        Ok(value.to_string())
    } else {
        Err(StateError::config(format!(
            "the checkpoint store's {what}= must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*, \
             at most 63 bytes)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use state_core::ErrorKind;

    #[test]
    fn urls_are_taken_apart_without_repeating_credentials() {
        let parsed =
            StoreUrl::parse("postgres://u:secret@db:5432/app?sslmode=prefer&schema=ck&table=t1");
        let parsed = parsed.expect("parses");
        assert_eq!(
            parsed.driver_url,
            "postgres://u:secret@db:5432/app?sslmode=prefer"
        );
        assert_eq!(
            (parsed.schema.as_str(), parsed.table.as_str()),
            ("ck", "t1")
        );
        assert_eq!(parsed.place, "postgres://db:5432/app?schema=ck&table=t1");

        let plain = StoreUrl::parse("postgresql://h/db").expect("parses");
        assert_eq!(plain.schema, PostgresCheckpointStore::DEFAULT_SCHEMA);
        assert_eq!(plain.table, PostgresCheckpointStore::DEFAULT_TABLE);
        assert_eq!(
            plain.place,
            "postgres://h/db?schema=public&table=state_checkpoint_files"
        );

        for (url, says) in [
            ("postgres://u:secret@h/db?table=a;drop", "plain identifier"),
            ("postgres://u:secret@h/db?schema=1a", "plain identifier"),
            ("postgres://u:secret@h/db?prefix=x", "not a parameter"),
            ("postgres://u:secret@h/db#frag", "fragment"),
            ("redis://u:secret@h", "not a PostgreSQL"),
        ] {
            let err = StoreUrl::parse(url).err();
            assert_eq!(err.as_ref().map(|e| e.kind()), Some(ErrorKind::Config));
            let message = err.map(|e| e.message().to_string()).unwrap_or_default();
            assert!(message.contains(says), "{url}: {message}");
            assert!(!message.contains("secret"), "{url}: {message}");
        }
    }
}
