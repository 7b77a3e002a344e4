//! The pgbench floor of a PostgreSQL mode: the mode's own acquire and release statements
//! (`state_lock::postgres_statements`) run by `pgbench -M prepared` on one connection,
//! against pgbench's own `SELECT 1`, alternating per round.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use state_lock::{LockMode, advisory_key, postgres_statements};

use crate::measure::{Role, Rounds, Row, percentiles};
use crate::{Options, Result, unique};

pub fn pgbench_floor(
    opts: &Options,
    schema: &str,
    mode: LockMode,
    group: &'static str,
) -> Result<Row> {
    let name = unique("floor");
    let script = pgbench_script(schema, mode, &name);
    let defines = [
        ("name", name.clone()),
        ("owner", "bench-floor-owner".to_string()),
    ];
    let select_one = "SELECT 1;\n";
    pgbench(&opts.postgres, &script, &defines, 100)?;
    let mut rounds = Rounds::default();
    for _ in 0..opts.rounds {
        let rt = percentiles(pgbench(&opts.postgres, select_one, &[], opts.iterations)?);
        let c = percentiles(pgbench(&opts.postgres, &script, &defines, opts.iterations)?);
        rounds.push(rt, c);
    }
    let label = format!(
        "PostgreSQL, {} mode: the same two statements by `pgbench -M prepared`",
        mode.as_str()
    );
    Ok(rounds.into_row(label, Role::ToolFloor, group))
}

/// The mode's two statements as a pgbench script, with pgbench variables (or values) for
/// the placeholders; `:token` comes from the acquire's RETURNING.
fn pgbench_script(schema: &str, mode: LockMode, name: &str) -> String {
    let key = advisory_key(name);
    let (high, low) = key_halves(key);
    match mode {
        // `$1`, the pid the connection was opened on, is the pid itself here.
        LockMode::Session => format!(
            "{};\n{};\n",
            postgres_statements::session_acquire(schema),
            postgres_statements::SESSION_RELEASE
        )
        .replace("$1", "pg_backend_pid()")
        .replace("$2", &key.to_string()),
        LockMode::Lease => format!(
            "{} \\gset\n{};\n",
            postgres_statements::lease_acquire(schema)
                .replace("$3", "30000")
                .replace("$4", &high.to_string())
                .replace("$5", &low.to_string()),
            postgres_statements::lease_release(schema).replace("$3", ":token"),
        )
        .replace("$1", ":name")
        .replace("$2", ":owner"),
    }
}

/// Runs `script` `transactions` times with pgbench on one connection and returns each
/// transaction's latency: the differences of the end times in pgbench's log (its own
/// latency column reads 0 for most fast transactions in pgbench 15).
fn pgbench(
    url: &str,
    script: &str,
    defines: &[(&str, String)],
    transactions: usize,
) -> Result<Vec<Duration>> {
    let dir = std::env::temp_dir().join(unique("pgbench"));
    std::fs::create_dir_all(&dir)?;
    let outcome = pgbench_in(&dir, url, script, defines, transactions);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn pgbench_in(
    dir: &Path,
    url: &str,
    script: &str,
    defines: &[(&str, String)],
    transactions: usize,
) -> Result<Vec<Duration>> {
    let file = dir.join("script.sql");
    std::fs::write(&file, script)?;
    let mut cmd = Command::new("pgbench");
    cmd.args(["-n", "-c", "1", "-M", "prepared", "-l", "-t"])
        .arg(transactions.to_string())
        .arg("--log-prefix")
        .arg(dir.join("log"))
        .arg("-f")
        .arg(&file);
    for (name, value) in defines {
        cmd.arg("-D").arg(format!("{name}={value}"));
    }
    let out = cmd.arg(url).output().map_err(|e| {
        format!(
            "cannot run pgbench, which the PostgreSQL pgbench rows need ({e}); install it \
             (Debian: postgresql-client)"
        )
    })?;
    if !out.status.success() {
        return Err(format!(
            "pgbench failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    transaction_latencies(dir, transactions)
}

/// The gaps between consecutive transaction end times in pgbench's logs under `dir`.
fn transaction_latencies(dir: &Path, transactions: usize) -> Result<Vec<Duration>> {
    let mut ends = Vec::with_capacity(transactions);
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("log"))
        {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            // client transaction latency script epoch_s epoch_us
            let fields: Vec<u64> = line
                .split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect();
            if let [_, _, _, _, secs, micros, ..] = fields[..] {
                ends.push(secs * 1_000_000 + micros);
            }
        }
    }
    ends.sort_unstable();
    Ok(ends
        .windows(2)
        .map(|w| Duration::from_micros(w[1] - w[0]))
        .collect())
}

/// The advisory key's halves as the signed int4s PostgreSQL shows in `pg_locks`, widened
/// to int8 as our lock binds them.
pub fn key_halves(key: i64) -> (i64, i64) {
    (i64::from((key >> 32) as i32), i64::from(key as u32 as i32))
}
