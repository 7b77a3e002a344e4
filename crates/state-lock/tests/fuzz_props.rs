//! The lock's part of the `config` and `redis_reply` fuzz targets (see `fuzz/` at the
//! workspace root) as property tests that CI runs: the lock configs' `from_url` on
//! arbitrary and near-valid URLs ends in a config or a `Config` error and never shows the
//! password; a fencing token is read from decimal text only, and any other reply is a
//! `Backend` error.
#![cfg(all(feature = "redis", feature = "postgres"))]

use proptest::prelude::*;
use state_core::ErrorKind;
use state_lock::fuzzing::token_reply;
use state_lock::{PostgresLockConfig, RedisLockConfig};
use state_redis::redis::{Value, parse_redis_value};

/// A password no generated junk spells, to check it is never shown.
const SECRET: &str = "pw-Zq7fuzzsecret";

fn junk() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9]{1,8}",
        "-?[0-9]{1,3}(ms|s|m|h|)",
        "(true|false|session|lease|yes)",
        "[%@:/?&=#\\[\\], \\\\]{1,4}",
        ".{0,6}",
    ]
}

fn near_valid_url() -> impl Strategy<Value = String> {
    let scheme = prop::sample::select(vec![
        "redis://",
        "redis+sentinel://",
        "redis+cluster://",
        "postgres://",
        "memory://",
    ]);
    let user = prop_oneof![Just(String::new()), Just(format!("u:{SECRET}@"))];
    let host = prop_oneof![Just("h:1".to_string()), Just("[::1]".to_string()), junk()];
    let mut names = vec![
        "lock_mode",
        "wait_timeout",
        "pgbouncer",
        "durable_leases",
        "prefix",
    ];
    names.extend(state_redis::URL_PARAMS);
    names.extend(state_postgres::URL_PARAMS);
    let name = prop_oneof![prop::sample::select(names).prop_map(String::from), junk()];
    let query = prop::collection::vec((name, junk()), 0..4);
    (scheme, user, host, junk(), query).prop_map(|(scheme, user, host, path, query)| {
        let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{scheme}{user}{host}/{path}?{}", query.join("&"))
    })
}

fn check(url: &str) -> Result<(), TestCaseError> {
    let mut shown = Vec::new();
    for result in [
        RedisLockConfig::from_url(url).map(|c| format!("{c:?}")),
        PostgresLockConfig::from_url(url).map(|c| format!("{c:?}")),
    ] {
        match result {
            Ok(debug) => shown.push(debug),
            Err(e) => {
                prop_assert_eq!(e.kind(), ErrorKind::Config, "{:?}: {}", url, e);
                prop_assert!(!e.message().is_empty());
                shown.push(e.to_string());
            }
        }
    }
    if url.matches(SECRET).count() == 1 {
        for text in shown {
            prop_assert!(!text.contains(SECRET), "{url:?}: {text}");
        }
    }
    Ok(())
}

fn check_token(reply: &Value) -> Result<(), TestCaseError> {
    let text = match reply {
        Value::BulkString(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let want = text.and_then(|t| t.parse::<u64>().ok());
    match token_reply("fuzz", reply) {
        Ok(token) => prop_assert_eq!(Some(token.0), want),
        Err(e) => {
            prop_assert_eq!(want, None);
            prop_assert_eq!(e.kind(), ErrorKind::Backend);
            prop_assert!(e.message().contains("fuzz"), "names the lock: {e}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn lock_configs_from_near_valid_urls(url in near_valid_url()) {
        check(&url)?;
    }

    #[test]
    fn lock_configs_from_arbitrary_text(input in any::<String>(), scheme in 0usize..3) {
        check(&format!("{}{input}", ["", "redis://", "postgres://"][scheme]))?;
    }

    #[test]
    fn tokens_from_arbitrary_replies(reply in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..24).prop_map(Value::BulkString),
        "[+-]?[0-9]{0,22}".prop_map(|s| Value::BulkString(s.into_bytes())),
        "[0-9 .e+-]{0,22}".prop_map(Value::SimpleString),
        any::<i64>().prop_map(Value::Int),
        Just(Value::Nil),
        Just(Value::Okay),
    ]) {
        check_token(&reply)?;
    }

    #[test]
    fn tokens_from_arbitrary_resp_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(reply) = parse_redis_value(&bytes) {
            check_token(&reply)?;
        }
    }
}
