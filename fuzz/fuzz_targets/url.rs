//! Arbitrary text into the URL parser of a registry that knows every backend: an error is a
//! `Config` error with a message; a server URL that parses comes back unchanged from the
//! text `expose` gives the drivers; the backends' URL readers take whatever parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use state_core::{ErrorKind, MemoryBackend, Registry, StateError, StateUrl, UrlShape};

thread_local! {
    static REGISTRY: Registry = {
        let mut registry = Registry::new();
        state_redis::register(&mut registry);
        state_postgres::register(&mut registry);
        state_embedded::register(&mut registry);
        state_lock::register(&mut registry);
        registry
    };
}

fn config_error(e: &StateError, input: &str) {
    assert_eq!(e.kind(), ErrorKind::Config, "{input:?}: {e}");
    assert!(!e.message().is_empty(), "{input:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    // The duration grammar of `ttl=` and the timeouts, on its own.
    let _ = state_core::parse_duration(input);
    REGISTRY.with(|registry| {
        let schemes = registry.schemes();
        let parsed = registry.parse(input);
        let direct = StateUrl::parse(input, &schemes);
        assert_eq!(parsed.as_ref().ok(), direct.as_ref().ok(), "{input:?}");
        let url = match parsed {
            Ok(url) => url,
            Err(e) => return config_error(&e, input),
        };
        let _ = (url.to_string(), format!("{url:?}"), url.redacted());
        if matches!(url.scheme().shape(), UrlShape::Hosts { .. }) {
            let exposed = url.expose(true);
            match StateUrl::parse(&exposed, &schemes) {
                Ok(again) => assert_eq!(again, url, "{input:?} exposed as {exposed:?}"),
                Err(e) => panic!("{input:?} exposed as {exposed:?} does not parse: {e}"),
            }
        }
        if let Err(e) = url.default_ttl() {
            config_error(&e, input);
        }
        if let Err(e) = MemoryBackend::from_url(&url) {
            config_error(&e, input);
        }
        if let Err(e) = state_embedded::RedbConfig::from_url(&url) {
            config_error(&e, input);
        }
    });
});
