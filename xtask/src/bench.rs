//! `cargo xtask bench [embedded|redis|postgres|locks|overhead|checkpoint|compression|all]
//! [--runs N]
//! [--calls N] [--seconds S] [--keys N] [--quick] [--no-write]`
//!
//! For each workload, runs `statectl bench` (ours) and the raw-engine reference `bench-ref`
//! with the same shape, `--runs` times each (default 3), alternating which goes first, takes
//! the medians, prints ours/raw ratios and rewrites this backend's section of BENCHMARKS.md.
//! Both tools write the same JSON (`bench_ref::report`), parsed here by hand to keep xtask's
//! dependencies at anyhow and clap. `redis` (bench/redis.rs) also runs `redis-benchmark`, all
//! on a private `redis-server`; `postgres` (bench/postgres.rs) also runs `pgbench` with the
//! backend's SQL, in schemas of its own that it drops. `locks` runs state-lock's
//! `lock_latency` example: uncontended acquire+release against one round trip, same run.
//! `checkpoint` (bench/checkpoint.rs) runs `statectl checkpoint create|restore` of 1M keys
//! on each backend for peak RSS (against a tenth of the keys: flat memory) and time
//! against psql `COPY` and `redis-cli --pipe` of the same rows. `compression`
//! (bench/compression.rs) times puts and gets of 16 KiB and 256 KiB values, text and
//! random, bare and under state-core's compression layer, and the bytes stored.
//!
//! One file per job (`embedded`, `redis`, `postgres`, `locks`) over what they share:
//! `options` (the command line), `measure` (paired runs, medians, ratios), `tools` (our
//! release binaries, reference tools, scratch space) and `report` (BENCHMARKS.md).

use anyhow::Result;

use crate::util;

mod checkpoint;
mod clients;
mod compression;
mod embedded;
mod locks;
mod measure;
mod options;
mod overhead;
mod peers;
mod postgres;
mod redis;
mod report;
mod scaling;
mod svg;
mod tools;

/// Entry point of `cargo xtask bench`, with the arguments after `bench`.
pub fn run(args: &[String]) -> Result<()> {
    let opts = options::parse(args)?;
    let root = util::workspace_root();
    for backend in &opts.backends {
        match *backend {
            "embedded" => embedded::run(&root, &opts)?,
            "redis" => redis::run(&root, &opts)?,
            "locks" => locks::run(&root, &opts)?,
            "overhead" => overhead::run(&root, &opts)?,
            "checkpoint" => checkpoint::run(&root, &opts)?,
            "compression" => compression::run(&root, &opts)?,
            "peers" => peers::run(&root, &opts)?,
            _ => postgres::run(&root, &opts)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use anyhow::Result;

    use super::measure::{Stats, json_number, median};
    use super::options::parse;

    #[test]
    fn reads_numbers_from_our_json() {
        let text = r#"{"results": [ {"op": "get", "ops_per_sec": 1234.5, "p50_us":7e-1} ]}"#;
        assert_eq!(json_number(text, "ops_per_sec"), Some(1234.5));
        assert_eq!(json_number(text, "p50_us"), Some(0.7));
        assert_eq!(json_number(text, "p99_us"), None);
    }

    #[test]
    fn medians_and_arguments() -> Result<()> {
        let s = |x| Stats {
            ops_per_sec: x,
            p50_us: x,
            p99_us: x,
            cpu_us_per_op: x,
        };
        assert_eq!(median(&[s(3.0), s(1.0), s(2.0)]).ops_per_sec, 2.0);
        assert_eq!(median(&[s(4.0), s(1.0)]).p50_us, 2.5);
        let o = parse(&["all".into(), "--runs".into(), "5".into()])?;
        assert_eq!((o.backends.len(), o.runs, o.pairs), (8, 5, 5));
        let o = parse(&["checkpoint".into(), "--keys".into(), "2000".into()])?;
        assert_eq!((o.backends, o.keys), (vec!["checkpoint"], 2000));
        assert!(parse(&["--keys".into(), "5".into()]).is_err());
        let o = parse(&["overhead".into(), "--calls".into(), "1000".into()])?;
        assert_eq!(
            (o.backends, o.runs, o.pairs, o.calls),
            (vec!["overhead"], 3, 5, 1000)
        );
        let o = parse(&["overhead".into(), "--quick".into()])?;
        assert_eq!((o.pairs, o.calls, o.seconds), (1, 200_000, 1.0));
        assert!(parse(&["--runs".into(), "0".into()]).is_err());
        assert!(parse(&["--seconds".into(), "-1".into()]).is_err());
        assert!(parse(&["--calls".into(), "x".into()]).is_err());
        assert!(parse(&["mysql".into()]).is_err());
        Ok(())
    }
}
