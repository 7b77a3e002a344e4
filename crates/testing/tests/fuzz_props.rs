//! The fuzz targets of `fuzz/` (url, config, record, redis_reply, cluster_nodes) as property
//! tests that CI runs: arbitrary bytes and near-valid inputs built from pieces with random
//! junk, asserting what the targets assert. No panic; an error is a `Config` (URLs) or
//! `Corrupt` (stored records) error with a message; round trips where there is one. The
//! inputs that once failed a target are kept at the end, exactly as found.
//!
//! They live here rather than in each crate's tests because this crate already has proptest
//! and every backend among its dev-dependencies.

use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;
use state_core::{ErrorKind, MemoryBackend, Registry, StateError, StateUrl, UrlShape};
use state_embedded::RedbConfig;
use state_embedded::fuzzing::{
    decode_metadata, decode_record, encode_record, expiry_key, expiry_of, prefix_end,
    split_expiry_key,
};
use state_postgres::PostgresConfig;
use state_redis::RedisConfig;
use state_redis::fuzzing as reply;
use state_redis::redis::{Value, parse_redis_value};

/// A password no generated junk spells, to check it is never shown.
const SECRET: &str = "pw-Zq7fuzzsecret";

fn config() -> ProptestConfig {
    // Parsers take microseconds: 2048 cases are well under a second each in a debug build;
    // PROPTEST_CASES asks for a longer run.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2048);
    ProptestConfig {
        cases,
        // A case that hangs (a parser looping) fails after 30 s instead of hanging the run:
        // proptest then runs the cases in a child process it can give up on. Shrinking a
        // hang costs 30 s a step, so it stops after two minutes.
        timeout: 30_000,
        max_shrink_time: 120_000,
        // A failure is printed; inputs worth keeping go into the regressions test below.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    state_redis::register(&mut registry);
    state_postgres::register(&mut registry);
    state_embedded::register(&mut registry);
    registry
}

fn is_config_error(e: &StateError) -> bool {
    e.kind() == ErrorKind::Config && !e.message().is_empty()
}

/// What the `url` target asserts of one input.
fn check_url(registry: &Registry, input: &str) -> Result<(), TestCaseError> {
    let url = match registry.parse(input) {
        Ok(url) => url,
        Err(e) => {
            prop_assert!(is_config_error(&e), "{input:?}: {e:?}");
            return Ok(());
        }
    };
    let shown = format!("{url} {url:?} {}", url.redacted());
    if secret_is_a_password(input) {
        prop_assert!(!shown.contains(SECRET), "{shown}");
    }
    if matches!(url.scheme().shape(), UrlShape::Hosts { .. }) {
        let exposed = url.expose(true);
        let again = StateUrl::parse(&exposed, &registry.schemes());
        prop_assert_eq!(
            again.ok(),
            Some(url.clone()),
            "{:?} exposed as {:?}",
            input,
            exposed
        );
    }
    for result in [
        url.default_ttl().map(drop),
        MemoryBackend::from_url(&url).map(drop),
        RedbConfig::from_url(&url).map(drop),
    ] {
        if let Err(e) = result {
            prop_assert!(is_config_error(&e), "{input:?}: {e:?}");
        }
    }
    Ok(())
}

/// Whether the URL's only copy of [`SECRET`] is a password: in its user info, or as the
/// value of a `password=` parameter. (`redb:` takes any text as its path, so a secret there
/// is just a file name.)
fn secret_is_a_password(url: &str) -> bool {
    let Ok(parsed) = registry().parse(url) else {
        return false;
    };
    let as_password = parsed.password().is_some_and(|p| p.expose() == SECRET)
        || parsed.param("password") == Some(SECRET);
    as_password && url.matches(SECRET).count() == 1
}

/// What the `config` target asserts: a config or a `Config` error, and the password never
/// in a config's `Debug` nor in an error.
fn check_configs(url: &str) -> Result<(), TestCaseError> {
    let secret_only_as_password = secret_is_a_password(url);
    let mut shown = Vec::new();
    let mut take = |r: state_core::Result<String>| -> Result<(), TestCaseError> {
        match r {
            Ok(debug) => shown.push(debug),
            Err(e) => {
                prop_assert!(is_config_error(&e), "{url:?}: {e:?}");
                shown.push(e.to_string());
            }
        }
        Ok(())
    };
    take(RedisConfig::from_url(url).map(|c| format!("{c:?}")))?;
    take(PostgresConfig::from_url(url).map(|c| format!("{c:?}")))?;
    if let Ok(parsed) = StateUrl::parse(url, &[state_embedded::REDB]) {
        take(RedbConfig::from_url(&parsed).map(|c| format!("{c:?}")))?;
    }
    if secret_only_as_password {
        for text in shown {
            prop_assert!(!text.contains(SECRET), "{url:?}: {text}");
        }
    }
    Ok(())
}

/// Text that is sometimes right and often nearly so.
fn junk() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9]{1,8}",
        "[0-9]{1,6}",
        "-?[0-9]{1,3}(ms|s|m|h|d|)",
        "(true|false|yes|0|1)",
        "[%@:/?&=#\\[\\], \t\\\\]{1,4}",
        "%[0-9a-fA-FgG]{0,2}",
        ".{0,6}",
    ]
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("localhost".to_string()),
        Just("127.0.0.1".to_string()),
        Just("[::1]".to_string()),
        Just("::1".to_string()),
        Just("[".to_string()),
        Just("[[]".to_string()),
        Just("]".to_string()),
        Just(String::new()),
        "[a-z.]{1,10}",
        junk(),
    ]
}

fn port() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        (0u32..70_000).prop_map(|p| format!(":{p}")),
        junk().prop_map(|j| format!(":{j}")),
    ]
}

fn userinfo() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(format!(":{SECRET}@")),
        "[a-z]{0,6}".prop_map(|u| format!("{u}:{SECRET}@")),
        junk().prop_map(|j| format!("{j}@")),
    ]
}

fn params(names: Vec<&'static str>) -> impl Strategy<Value = String> {
    let name = prop_oneof![prop::sample::select(names).prop_map(String::from), junk()];
    // `password=` is no backend's parameter, but users write it: its value must not show.
    let pair = prop_oneof![
        6 => (name, junk()).prop_map(|(k, v)| format!("{k}={v}")),
        1 => Just(format!("password={SECRET}")),
    ];
    prop::collection::vec(pair, 0..4).prop_map(|pairs| {
        if pairs.is_empty() {
            String::new()
        } else {
            format!("?{}", pairs.join("&"))
        }
    })
}

fn all_params() -> Vec<&'static str> {
    let mut names = vec!["prefix", "ttl"];
    names.extend(state_redis::URL_PARAMS);
    names.extend(state_postgres::URL_PARAMS);
    names.extend(state_embedded::URL_PARAMS);
    names
}

/// A URL of a known scheme built from pieces, each possibly junk.
fn near_valid_url() -> impl Strategy<Value = String> {
    let scheme = prop::sample::select(vec![
        "redis://",
        "rediss://",
        "redis+sentinel://",
        "redis+cluster://",
        "postgres://",
        "memory://",
        "redb:",
        "REDIS://",
        "redis:",
        "unknown://",
    ]);
    let hosts = prop::collection::vec((host(), port()), 1..4).prop_map(|hs| {
        hs.iter()
            .map(|(h, p)| format!("{h}{p}"))
            .collect::<Vec<_>>()
    });
    let path = prop_oneof![Just(String::new()), junk().prop_map(|j| format!("/{j}"))];
    (scheme, userinfo(), hosts, path, params(all_params())).prop_map(
        |(scheme, user, hosts, path, query)| {
            format!("{scheme}{user}{}{path}{query}", hosts.join(","))
        },
    )
}

/// A Redis reply tree, of the kinds the driver hands over.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        Just(Value::Okay),
        any::<i64>().prop_map(Value::Int),
        prop::collection::vec(any::<u8>(), 0..24).prop_map(Value::BulkString),
        "[0-9]{0,21}".prop_map(|s| Value::BulkString(s.into_bytes())),
        ".{0,12}".prop_map(Value::SimpleString),
        any::<bool>().prop_map(Value::Boolean),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop::collection::vec(inner, 0..6).prop_map(Value::Array)
    })
}

/// What the `redis_reply` target asserts of one reply.
fn check_reply(value: &Value) -> Result<(), TestCaseError> {
    if let Ok((_, keys)) = reply::scan_reply(value.clone()) {
        let Value::Array(parts) = value else {
            return Err(TestCaseError::fail("a SCAN page from a non-array"));
        };
        let Some(Value::Array(found)) = parts.get(1) else {
            return Err(TestCaseError::fail("a SCAN page without a key array"));
        };
        let bulk = found
            .iter()
            .filter(|v| matches!(v, Value::BulkString(_)))
            .count();
        prop_assert_eq!(keys.len(), bulk);
    }
    if let Ok(text) = reply::info_text(value) {
        let _ = (
            reply::info_u64(text, "used_memory"),
            reply::cluster_nodes(text),
        );
    }
    if let Ok(n) = reply::int_of(value) {
        let _ = reply::expiry_of(n, UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    }
    if let Value::Array(items) = value {
        let _ = reply::first_error(items);
    }
    let _ = (
        reply::bytes_of(value.clone()),
        reply::lift_reply(value.clone()),
    );
    Ok(())
}

/// A `CLUSTER NODES` line built from pieces, each possibly junk.
fn cluster_line() -> impl Strategy<Value = String> {
    let flags = prop::sample::select(vec![
        "master",
        "myself,master",
        "master,fail",
        "slave",
        "master,noaddr",
        "master,handshake",
        "",
    ]);
    let addr = (host(), port(), junk()).prop_map(|(h, p, j)| format!("{h}{p}@1{j}"));
    let slots = prop_oneof![Just(String::new()), Just(" 0-5460".to_string()), junk()];
    ("[a-f0-9]{0,6}", addr, flags, slots).prop_map(|(id, addr, flags, slots)| {
        format!("{id} {addr} {flags} - 0 0 1 connected{slots}")
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_text_parses_or_is_a_config_error(input in prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<u8>(), 0..512)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]) {
        check_url(&registry(), &input)?;
        let _ = state_core::parse_duration(&input);
    }

    #[test]
    fn near_valid_urls_parse_or_are_config_errors(url in near_valid_url()) {
        check_url(&registry(), &url)?;
    }

    #[test]
    fn configs_from_near_valid_urls_or_config_errors(url in near_valid_url()) {
        check_configs(&url)?;
    }

    #[test]
    fn configs_from_arbitrary_text(input in any::<String>(), scheme in 0usize..3) {
        let url = format!("{}{input}", ["", "redis://", "postgres://"][scheme]);
        check_configs(&url)?;
    }

    #[test]
    fn arbitrary_bytes_are_a_record_or_corrupt(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        match decode_record(&bytes) {
            Ok((expires, metadata, value)) => {
                prop_assert_eq!(encode_record(expires, metadata, value)?, bytes.clone());
                prop_assert_eq!(expiry_of(&bytes)?, expires);
                if let Err(e) = decode_metadata(&bytes) {
                    prop_assert_eq!(e.kind(), ErrorKind::Corrupt);
                }
            }
            Err(e) => prop_assert_eq!(e.kind(), ErrorKind::Corrupt),
        }
        match split_expiry_key(&bytes) {
            Ok((at, key)) => prop_assert_eq!(expiry_key(at, key), bytes.clone()),
            Err(e) => prop_assert_eq!(e.kind(), ErrorKind::Corrupt),
        }
    }

    #[test]
    fn records_round_trip_and_their_truncations_are_corrupt(
        expires in prop::option::of(1u64..),
        metadata in prop::option::of(prop::collection::vec(any::<u8>(), 1..64)),
        value in prop::collection::vec(any::<u8>(), 0..128),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = encode_record(expires, metadata.as_deref(), &value)?;
        prop_assert_eq!(decode_record(&bytes)?, (expires, metadata.as_deref(), &value[..]));
        // Cutting into the header or the metadata leaves a record that says it is longer.
        let needed = 13 + metadata.as_ref().map_or(0, Vec::len);
        let short = &bytes[..cut.index(needed)];
        prop_assert_eq!(decode_record(short).err().map(|e| e.kind()), Some(ErrorKind::Corrupt));
    }

    #[test]
    fn prefix_bounds_are_above_every_key_with_the_prefix(
        prefix in prop::collection::vec(prop_oneof![Just(0xFFu8), any::<u8>()], 0..12),
        rest in prop::collection::vec(any::<u8>(), 0..12),
    ) {
        let key = [&prefix[..], &rest[..]].concat();
        match prefix_end(&prefix) {
            Some(end) => prop_assert!(key < end && prefix < end),
            None => prop_assert!(prefix.iter().all(|&b| b == 0xFF)),
        }
    }

    #[test]
    fn arbitrary_resp_bytes_decode_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(value) = parse_redis_value(&bytes) {
            check_reply(&value)?;
        }
    }

    #[test]
    fn arbitrary_reply_trees_decode_without_panic(value in value()) {
        check_reply(&value)?;
    }

    #[test]
    fn scan_pages_keep_every_key(
        cursor in any::<u64>(),
        keys in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..16), 0..8),
    ) {
        let page = Value::Array(vec![
            Value::BulkString(cursor.to_string().into_bytes()),
            Value::Array(keys.iter().cloned().map(Value::BulkString).collect()),
        ]);
        prop_assert_eq!(reply::scan_reply(page)?, (cursor, keys));
    }

    #[test]
    fn cluster_nodes_lists_only_clean_masters(
        lines in prop::collection::vec(prop_oneof![cluster_line(), ".{0,40}"], 0..6),
    ) {
        let text = lines.join("\n");
        for (host, _port) in reply::cluster_nodes(&text) {
            prop_assert!(!host.is_empty() && !host.contains(['@', ',', ' ']), "{host:?}");
            let listed = text.contains(&format!("{host}:")) && text.contains("master");
            prop_assert!(listed, "{host:?} in {text:?}");
        }
    }

    #[test]
    fn info_fields_are_line_values(
        lines in prop::collection::vec(("[a-z_]{1,8}", junk()), 0..8),
        name in "[a-z_]{1,8}",
    ) {
        let text: String = lines.iter().map(|(k, v)| format!("{k}:{v}\r\n")).collect();
        let want = lines.iter().find(|(k, _)| *k == name).map(|(_, v)| v.trim());
        let field = reply::info_field(&text, &name);
        // A value holding a line break ends at it, like Redis' own lines.
        if want.is_some_and(|v| !v.contains(['\n', '\r'])) {
            prop_assert_eq!(field, want);
        }
        if let Ok(n) = reply::info_u64(&text, &name) {
            prop_assert_eq!(field.map(str::parse::<u64>), Some(Ok(n)));
        }
    }
}

/// Inputs that failed a fuzz target once, exactly as found.
#[test]
fn regressions_from_the_fuzz_targets() -> Result<(), TestCaseError> {
    let registry = registry();
    // url: a host with a stray bracket parsed, but `expose` wrote it back as text that did
    // not parse (and RedisConfig::from_url, which re-reads that text, failed oddly).
    for input in [
        "redis://[[]",
        "redis://a]:b:1",
        "redis+cluster://h:1,[x[]:2",
    ] {
        check_url(&registry, input)?;
        let e = registry.parse(input).err();
        assert!(e.as_ref().is_some_and(is_config_error), "{input:?}: {e:?}");
        check_configs(input)?;
    }
    Ok(())
}

/// The generators' password forms are recognised, so the checks above do run on them.
#[test]
fn passwords_in_user_info_and_parameters_are_checked() -> Result<(), TestCaseError> {
    for url in [
        format!("redis://:{SECRET}@h:1"),
        format!("postgres://u:{SECRET}@h/db"),
        format!("redis://h:1/?password={SECRET}"),
        format!("postgres://u@h/db?password={SECRET}&sslmode=disable"),
        format!("redis+sentinel://:{SECRET}@h:1/m"),
    ] {
        assert!(secret_is_a_password(&url), "{url}");
        check_url(&registry(), &url)?;
        check_configs(&url)?;
    }
    assert!(!secret_is_a_password(&format!(
        "redis://h:1/?prefix={SECRET}"
    )));
    assert!(!secret_is_a_password(&format!("redb:/{SECRET}")));
    Ok(())
}
