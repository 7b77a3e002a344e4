use super::*;
use state_core::ErrorKind;

type Row = (Vec<u8>, Vec<u8>, Option<serde_json::Value>, Option<i64>);

fn rows() -> Vec<Row> {
    vec![
        (b"p:a".to_vec(), b"1".to_vec(), None, None),
        // Empty value, 0x00 and 0xFF in the key.
        (b"p:\x00\xff\x00".to_vec(), Vec::new(), None, Some(0)),
        (
            b"p:meta".to_vec(),
            vec![0; 300],
            Some(serde_json::json!({"source": "kafka", "n": [1, 2.5, null]})),
            Some(1_900_000_000_123_456),
        ),
        // Before 2000 and before 1970: negative PostgreSQL and Unix micros.
        (b"p:old".to_vec(), b"x".to_vec(), None, Some(-5)),
    ]
}

/// A whole stream of `rows` as the import writes it (key prefix `p:`).
fn stream(rows: &[Row]) -> Vec<u8> {
    let mut out = Vec::new();
    write_header(&mut out);
    for (key, value, meta, expiry) in rows {
        let user_key = key.strip_prefix(b"p:").unwrap_or(key);
        if let Err(e) = write_entry(&mut out, b"p:", user_key, value, meta.as_ref(), *expiry) {
            panic!("cannot write a row: {e}");
        }
    }
    write_trailer(&mut out);
    out
}

fn decode(fields: Fields<4>) -> Result<Row> {
    let [key, value, meta, expiry] = fields;
    Ok((
        bytes_field(key, "key")?.to_vec(),
        bytes_field(value, "value")?.to_vec(),
        jsonb_field(meta.as_deref())?,
        timestamptz_field(expiry.as_deref())?,
    ))
}

/// Feeds `data` cut at `cuts` and returns the rows, or the first error.
fn read(data: &[u8], cuts: &[usize]) -> Result<Vec<Row>> {
    let mut reader = CopyReader::<4>::new();
    let mut out = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain([&data.len()]) {
        let piece = Bytes::copy_from_slice(&data[from..cut]);
        reader.feed(piece, |fields| {
            out.push(decode(fields)?);
            Ok(())
        })?;
        from = cut;
    }
    reader.finish()?;
    Ok(out)
}

fn corrupt_kind(outcome: Result<Vec<Row>>) -> Option<ErrorKind> {
    outcome.err().map(|e| e.kind())
}

#[test]
fn rows_round_trip_whole_and_cut_anywhere() {
    let expected = rows();
    let data = stream(&expected);
    assert_eq!(read(&data, &[]).ok(), Some(expected.clone()));
    for cut in 0..=data.len() {
        assert_eq!(
            read(&data, &[cut]).ok(),
            Some(expected.clone()),
            "cut {cut}"
        );
    }
    // One byte at a time.
    let every: Vec<usize> = (1..data.len()).collect();
    assert_eq!(read(&data, &every).ok(), Some(expected));
}

#[test]
fn an_empty_stream_has_no_rows() {
    assert_eq!(read(&stream(&[]), &[]).ok(), Some(Vec::new()));
}

#[test]
fn every_truncation_is_a_corrupt_error() {
    let data = stream(&rows());
    for len in 0..data.len() {
        assert_eq!(
            corrupt_kind(read(&data[..len], &[])),
            Some(ErrorKind::Corrupt),
            "truncated to {len} bytes"
        );
    }
}

#[test]
fn malformed_streams_are_errors_not_panics() {
    let good = stream(&rows());
    let header = SIGNATURE.len() + 8;
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut bad = good.clone();
    bad[0] = b'X';
    cases.push(("signature", bad));
    cases.push(("short foreign prefix", b"COPY".to_vec()));
    let mut bad = good.clone();
    bad[SIGNATURE.len()] = 0x80;
    cases.push(("unknown flags", bad));
    let mut bad = good.clone();
    bad[SIGNATURE.len() + 4..header].copy_from_slice(&(-3i32).to_be_bytes());
    cases.push(("negative extension", bad));
    let mut bad = good.clone();
    bad[header..header + 2].copy_from_slice(&3i16.to_be_bytes());
    cases.push(("field count", bad));
    let mut bad = good.clone();
    bad[header + 2..header + 6].copy_from_slice(&(-2i32).to_be_bytes());
    cases.push(("negative length", bad));
    let mut bad = good.clone();
    bad[header + 2..header + 6].copy_from_slice(&i32::MAX.to_be_bytes());
    cases.push(("huge length", bad));
    let mut bad = good.clone();
    bad.push(0);
    cases.push(("bytes after the trailer", bad));
    for (what, data) in cases {
        assert_eq!(
            corrupt_kind(read(&data, &[])),
            Some(ErrorKind::Corrupt),
            "{what}"
        );
        // The same, arriving in small pieces.
        let cuts: Vec<usize> = (1..data.len()).step_by(3).collect();
        assert_eq!(
            corrupt_kind(read(&data, &cuts)),
            Some(ErrorKind::Corrupt),
            "{what}, in pieces"
        );
    }
}

#[test]
fn header_extensions_are_skipped() {
    let mut data = Vec::new();
    data.extend_from_slice(SIGNATURE);
    data.extend_from_slice(&0i32.to_be_bytes());
    data.extend_from_slice(&3i32.to_be_bytes());
    data.extend_from_slice(b"abc");
    let body = stream(&rows());
    data.extend_from_slice(&body[SIGNATURE.len() + 8..]);
    assert_eq!(read(&data, &[5, 20]).ok(), Some(rows()));
}

#[test]
fn field_decoders_check_their_input() {
    assert!(bytes_field(None, "key").is_err());
    assert!(timestamptz_field(Some(&[0; 7])).is_err());
    assert_eq!(
        timestamptz_field(Some(&i64::MAX.to_be_bytes())).ok(),
        Some(None)
    );
    assert_eq!(
        timestamptz_field(Some(&0i64.to_be_bytes())).ok(),
        Some(Some(PG_EPOCH_UNIX_MICROS))
    );
    assert!(jsonb_field(Some(b"\x02{}")).is_err());
    assert!(jsonb_field(Some(b"")).is_err());
    assert!(jsonb_field(Some(b"\x01{")).is_err());
    assert_eq!(
        jsonb_field(Some(b"\x01{\"a\":1}")).ok(),
        Some(Some(serde_json::json!({"a": 1})))
    );
}

#[test]
fn a_refused_row_leaves_nothing_behind() {
    let mut out = vec![7];
    let outcome = write_entry(&mut out, b"p:", b"k", b"v", None, Some(i64::MIN));
    assert!(outcome.is_err());
    assert_eq!(out, vec![7]);
}
