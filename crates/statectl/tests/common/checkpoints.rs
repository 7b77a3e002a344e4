//! The `statectl checkpoint` tests' shared parts: statectl in a directory of the test's
//! own, the shapes of `list` and of ids, and a Redis key prefix emptied when a test ends.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{one_sentence_failure, output, service_url, statectl, text, unique, with_param};

pub const REDIS_DEFAULT: &str = "redis://127.0.0.1:6379";
pub const POSTGRES_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";

/// statectl run from a directory of the test's own, with `--url` if one is given.
pub struct Statectl {
    pub dir: PathBuf,
    pub url: Option<String>,
}

impl Statectl {
    pub fn new(dir: &Path, url: Option<&str>) -> Self {
        Statectl {
            dir: dir.to_path_buf(),
            url: url.map(str::to_owned),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        statectl(&self.dir, self.url.as_deref(), args)
    }

    pub fn out(&self, args: &[&str]) -> Output {
        output(self.command(args), args)
    }

    /// A command that must succeed with nothing on stderr; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.out(args);
        assert!(
            out.status.success(),
            "statectl {args:?} failed ({:?}): {}",
            out.status.code(),
            text(&out.stderr)
        );
        assert!(out.stderr.is_empty(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// A command that must fail with `code`, one sentence on stderr and nothing on stdout;
    /// that sentence.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        one_sentence_failure(&self.out(args), args, code)
    }
}

/// `file:///…` of a directory.
pub fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// The ids `checkpoint list` prints, checking each line's shape.
pub fn listed(cli: &Statectl, store: &str) -> Vec<String> {
    cli.ok(&["checkpoint", "list", "--store", store])
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 4, "{line}");
            let created = fields[1];
            assert!(
                created.ends_with('Z') && created.get(10..11) == Some("T"),
                "created_at {created} is not RFC 3339 UTC"
            );
            assert!(fields[2].parse::<u64>().is_ok() && fields[3].parse::<u64>().is_ok());
            fields[0].to_owned()
        })
        .collect()
}

/// A checkpoint id's fencing token (`{token:020}-{seq:010}`).
pub fn token(id: &str) -> u64 {
    let (token, seq) = id.split_once('-').unwrap_or_else(|| panic!("id `{id}`"));
    assert_eq!((token.len(), seq.len()), (20, 10), "id `{id}`");
    token.parse().unwrap_or_else(|e| panic!("id `{id}`: {e}"))
}

/// `scan --values`, sorted (Redis scans in no order).
pub fn entries(cli: &Statectl) -> String {
    let scanned = cli.ok(&["scan", "--values"]);
    let mut lines: Vec<&str> = scanned.lines().collect();
    lines.sort_unstable();
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// The short form of an id, `7-3`, which statectl reads as the same id.
pub fn short(id: &str) -> String {
    let seq: u64 = id
        .rsplit_once('-')
        .and_then(|(_, seq)| seq.parse().ok())
        .unwrap_or_else(|| panic!("id `{id}`"));
    format!("{}-{seq}", token(id))
}

/// A key prefix of this test's on the test Redis, emptied when the test ends.
pub struct RedisPrefix {
    pub url: String,
}

impl RedisPrefix {
    pub fn new(tag: &str) -> Self {
        let base = service_url("STATE_TEST_REDIS_URL", REDIS_DEFAULT);
        RedisPrefix {
            url: with_param(&base, "prefix", &format!("{}:", unique(tag))),
        }
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let url = self.url.clone();
        let cleared = runtime().and_then(|rt| {
            rt.block_on(async {
                let backend = distributed_state::connect(&url).await?;
                backend.clear(b"").await
            })
            .map_err(|e| e.to_string())
        });
        if let Err(e) = cleared {
            eprintln!("could not clear the test's Redis prefix: {e}");
        }
    }
}

pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// A schema of the test's own on the test PostgreSQL, dropped when the test ends, passed or
/// failed.
pub struct Schema {
    base: String,
    name: String,
}

impl Schema {
    pub fn new(tag: &str) -> Self {
        Schema {
            base: service_url("STATE_TEST_POSTGRES_URL", POSTGRES_DEFAULT),
            name: unique(tag),
        }
    }

    /// The test PostgreSQL's URL with `schema=` this schema.
    pub fn url(&self) -> String {
        with_param(&self.base, "schema", &self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        let out = Command::new("psql")
            .args([&self.base, "-v", "ON_ERROR_STOP=1", "-q", "-c", &sql])
            .output();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("could not drop schema {}: {}", self.name, text(&out.stderr)),
            Err(e) => eprintln!("could not run psql: {e}"),
        }
    }
}
