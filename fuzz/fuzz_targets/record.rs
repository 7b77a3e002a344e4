//! Arbitrary bytes into the embedded (redb) backend's record decoder: a `Corrupt` error or a
//! record that encodes back to exactly the same bytes, with the same expiry as the cheap
//! header read; and the expiry index keys and prefix bounds around it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use state_core::ErrorKind;
use state_embedded::fuzzing::{
    decode_metadata, decode_record, encode_record, expiry_key, expiry_of, prefix_end,
    split_expiry_key,
};

fuzz_target!(|data: &[u8]| {
    match decode_record(data) {
        Ok((expires, metadata, value)) => {
            let again = encode_record(expires, metadata, value);
            assert_eq!(again.ok().as_deref(), Some(data));
            assert_eq!(expiry_of(data).ok(), Some(expires));
            if let Err(e) = decode_metadata(data) {
                assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
            }
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}"),
    }
    match split_expiry_key(data) {
        Ok((at, key)) => assert_eq!(expiry_key(at, key), data),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}"),
    }
    // The data's halves as a prefix and a key: the bound is above every key with the prefix.
    let (prefix, key) = data.split_at(data.len() / 2);
    if let Some(end) = prefix_end(prefix) {
        assert!(prefix < end.as_slice());
        let mut full = prefix.to_vec();
        full.extend_from_slice(key);
        assert!(full < end, "{prefix:?} {key:?} {end:?}");
    } else {
        assert!(prefix.iter().all(|&b| b == 0xFF));
    }
});
