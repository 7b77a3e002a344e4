//! The grammar, with the schemes of this workspace's backends declared as those crates do.

use std::time::Duration;

use super::*;
use crate::ErrorKind;
use crate::memory::MEMORY;

const REDB: Scheme = Scheme::new("redb", UrlShape::Path);
const REDIS: Scheme = Scheme::new("redis", UrlShape::hosts(6379, false));
const REDISS: Scheme = Scheme::new("rediss", UrlShape::hosts(6379, false));
const SENTINEL: Scheme = Scheme::new("redis+sentinel", UrlShape::hosts(26379, true));
const CLUSTER: Scheme = Scheme::new("redis+cluster", UrlShape::hosts(6379, true));
const POSTGRES: Scheme =
    Scheme::new("postgres", UrlShape::hosts(5432, false)).with_aliases(&["postgresql"]);
const ALL: [Scheme; 7] = [MEMORY, REDB, REDIS, REDISS, SENTINEL, CLUSTER, POSTGRES];

impl StateUrl {
    fn parse_any(input: &str) -> Result<StateUrl> {
        StateUrl::parse(input, &ALL)
    }
}

fn parse(s: &str) -> StateUrl {
    match StateUrl::parse_any(s) {
        Ok(url) => url,
        Err(e) => panic!("{s}: {e}"),
    }
}

fn config_error(s: &str) -> String {
    match StateUrl::parse_any(s) {
        Ok(url) => panic!("{s} parsed as {url:?}"),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Config, "{s}: {e}");
            e.to_string()
        }
    }
}

#[test]
fn expose_round_trips_with_the_password_and_only_there() -> Result<()> {
    let url =
        StateUrl::parse_any("redis+sentinel://u%20x:p%40ss%3Aw@h1:1,h2:2/mymaster?prefix=a%26b")?;
    let full = url.expose(true);
    assert!(full.contains("p%40ss%3Aw"), "{full}");
    let again = StateUrl::parse_any(&full)?;
    assert_eq!(again.password().map(Secret::expose), Some("p@ss:w"));
    assert_eq!(again.username(), Some("u x"));
    assert_eq!(again.key_prefix(), Some("a&b"));
    assert_eq!(again.redacted(), url.redacted());
    assert!(!url.expose(false).contains('?'));
    assert!(!url.redacted().contains("p%40ss") && !url.redacted().contains("p@ss"));
    Ok(())
}

#[test]
fn parses_every_scheme() {
    let u = parse("memory://");
    assert_eq!(u.scheme(), MEMORY);
    let u = parse("memory://?prefix=a:&ttl=30s");
    assert_eq!(u.key_prefix(), Some("a:"));
    assert_eq!(
        u.default_ttl().ok().flatten(),
        Some(Duration::from_secs(30))
    );

    let u = parse("redb:.statectl/state.redb");
    assert_eq!(u.path(), Some(".statectl/state.redb"));
    let u = parse("redb:///tmp/x.redb?prefix=p");
    assert_eq!(u.path(), Some("/tmp/x.redb"));

    let u = parse("redis://user:p%40ss@127.0.0.1:6380/3?prefix=x:");
    assert_eq!(u.scheme(), REDIS);
    assert_eq!(u.username(), Some("user"));
    assert_eq!(u.password().map(Secret::expose), Some("p@ss"));
    assert_eq!(u.hosts()[0].to_string(), "127.0.0.1:6380");
    assert_eq!(u.path(), Some("3"));

    let u = parse("rediss://localhost");
    assert_eq!((u.scheme(), u.hosts()[0].port), (REDISS, 6379));

    let u = parse("redis+sentinel://a:26379,b,[::1]:26380/mymaster");
    let hosts: Vec<String> = u.hosts().iter().map(ToString::to_string).collect();
    assert_eq!(hosts, ["a:26379", "b:26379", "[::1]:26380"]);
    assert_eq!(u.path(), Some("mymaster"));

    let u = parse("redis+cluster://n1:7000,n2:7001");
    assert_eq!(u.hosts().len(), 2);

    let u = parse("postgresql://me@db.local/optimizer?sslmode=require&table=t");
    assert_eq!(u.scheme(), POSTGRES);
    assert_eq!(u.hosts()[0].port, 5432);
    assert_eq!(u.path(), Some("optimizer"));
    assert_eq!(u.param("sslmode"), Some("require"));
}

#[test]
fn display_and_debug_never_show_the_password() {
    let u = parse("redis://admin:hunter2@h:1/0?password=hunter3&prefix=a");
    for shown in [u.to_string(), format!("{u:?}"), u.redacted()] {
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(shown.contains("admin:***@h:1/0"), "{shown}");
    }
    assert_eq!(format!("{:?}", Secret::new("x")), "Secret(***)");
}

#[test]
fn bad_urls_are_config_errors_that_say_why() {
    assert!(config_error("mysql://x").contains("unknown URL scheme `mysql`"));
    assert!(config_error("no-scheme-here").contains("unknown URL scheme"));
    assert!(config_error("redis://h:99999").contains("99999"));
    assert!(config_error("redis://a:1,b:2").contains("one host"));
    assert!(config_error("redis:h:1").contains("redis://"));
    assert!(config_error("redb:").contains("file path"));
    assert!(config_error("memory://?a=1&a=2").contains("twice"));
    assert!(config_error("redis://h/%zz").contains("percent"));
    assert!(config_error("redis://[::1/").contains("unclosed"));
}

#[test]
fn the_scheme_error_never_echoes_credentials() {
    let msg = config_error("foo://user:hunter2@h");
    assert!(!msg.contains("hunter2"), "{msg}");
}

#[test]
fn unknown_parameters_are_named() {
    let u = parse("memory://?prefix=a&colour=blue");
    let err = u.check_params(&[]).err().map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("`colour`") && e.contains("prefix, ttl")));
    let u = parse("memory://?ttl=soon");
    assert!(u.default_ttl().is_err());
}

#[test]
fn the_unknown_scheme_error_lists_the_schemes_given() {
    assert!(config_error("mysql://x").contains(
        "use memory://, redb:PATH, redis://, rediss://, redis+sentinel://, redis+cluster:// \
         or postgres://"
    ));
    let only = StateUrl::parse("redis://h", &[POSTGRES])
        .err()
        .map(|e| e.to_string());
    assert!(only.is_some_and(|e| e.contains("unknown URL scheme `redis`; use postgres://")));
    let alone = StateUrl::parse("redis://a,b", &[REDIS])
        .err()
        .map(|e| e.to_string());
    assert!(alone.is_some_and(|e| e.ends_with("a redis URL names one host")));
}

#[test]
fn schemes_are_equal_by_name_and_written_in_any_case() -> Result<()> {
    assert_eq!(StateUrl::parse_any("PostgreSQL://h/db")?.scheme(), POSTGRES);
    assert_eq!(StateUrl::parse_any("REDB:x")?.to_string(), "redb:x");
    assert_eq!(Scheme::new("redis", UrlShape::Bare), REDIS);
    assert_eq!(format!("{REDIS:?}"), "Scheme(redis)");
    Ok(())
}

/// Found by the `url` fuzz target: a host with a stray bracket parsed, but `expose` wrote it
/// back as text that did not parse, so a config that re-reads it failed on a URL it made.
#[test]
fn stray_brackets_in_a_host_are_refused() -> Result<()> {
    for input in [
        "redis://[[]",
        "redis://a]:b:1",
        "redis+cluster://h:1,[x[]:2",
    ] {
        let message = config_error(input);
        assert!(message.contains("stray"), "{input}: {message}");
    }
    let v6 = parse("redis+cluster://[::1]:7000,[fe80::2]");
    assert_eq!(StateUrl::parse_any(&v6.expose(true))?, v6);
    Ok(())
}

/// RELIABILITY 28: a password with a `/` or `?` written as is ended the authority early, and
/// the error quoted the rest of it as a port ("port `Sup3r` of host `u`").
#[test]
fn an_unencoded_slash_or_question_mark_in_a_password_is_refused_without_quoting_it() -> Result<()> {
    for input in [
        "redis://u:Sup3r/S3cretXYZ@127.0.0.1:6379",
        "redis://:Sup3r?S3cretXYZ@127.0.0.1:6379/0",
        "postgres://u:Sup3r/S3cretXYZ@h/db?sslmode=disable",
    ] {
        let message = config_error(input);
        assert!(message.contains("percent-encoded"), "{input}: {message}");
        assert!(
            !message.contains("Sup3r") && !message.contains("S3cret"),
            "{message}"
        );
    }
    // An `@` in a query parameter or behind an encoded password is not user info.
    parse("redis://h:6379/0?client_name=a@b");
    assert_eq!(
        parse("redis://u:Sup3r%2FS3cret@h:6379")
            .password()
            .map(|p| p.expose()),
        Some("Sup3r/S3cret")
    );
    Ok(())
}
