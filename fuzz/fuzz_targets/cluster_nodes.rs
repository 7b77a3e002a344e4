//! Arbitrary text as a `CLUSTER NODES` reply and as `INFO` text: every node listed is a master
//! of the text with a clean host; a field read is a line's value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use state_redis::fuzzing;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for (host, port) in fuzzing::cluster_nodes(text) {
        // The host is cut from `ip:port@cport[,hostname]` on a line flagged master.
        assert!(
            !host.is_empty() && !host.contains(['@', ',', ' ', '\n']),
            "{host:?}"
        );
        assert!(text.contains(&format!("{host}:")) && text.contains("master"));
        let _ = port;
    }
    // INFO field names are the first word of a line; try the first line's.
    let name = text.split(':').next().unwrap_or_default().trim();
    if let Some(value) = fuzzing::info_field(text, name) {
        assert!(text.contains(value));
    }
    if let Ok(n) = fuzzing::info_u64(text, name) {
        assert_eq!(
            fuzzing::info_field(text, name).map(str::parse::<u64>),
            Some(Ok(n))
        );
    }
});
