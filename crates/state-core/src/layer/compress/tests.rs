//! The compression layer's own cases: the stored bytes seen beside the values read.

use super::*;
use crate::memory::MemoryBackend;

/// zstd at `level`, or lz4 in a build without zstd.
fn zstd(level: i32) -> CompressionLayer {
    if cfg!(feature = "zstd") {
        CompressionLayer::zstd(level)
    } else {
        CompressionLayer::lz4()
    }
}

type Pair = (Arc<dyn StateBackend>, Arc<dyn StateBackend>);

/// A memory backend, and the same backend under `layer`: what is stored, and what reads.
fn pair(layer: CompressionLayer) -> Pair {
    let raw: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    (raw.clone(), layer.layer(raw))
}

fn text(len: usize) -> Vec<u8> {
    let line = b"{\"user\": 4711, \"name\": \"ada\", \"tags\": [\"a\", \"b\"]}\n";
    line.iter().copied().cycle().take(len).collect()
}

/// Incompressible bytes (xorshift), not beginning with the magic.
fn random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out: Vec<u8> = (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed.to_le_bytes()[0]
        })
        .collect();
    if let Some(first) = out.first_mut() {
        *first = 0;
    }
    out
}

async fn stored(raw: &Arc<dyn StateBackend>, key: &[u8]) -> Vec<u8> {
    raw.get(key)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
        .to_vec()
}

fn layers() -> [CompressionLayer; 2] {
    [CompressionLayer::lz4(), zstd(3)]
}

#[tokio::test]
async fn values_at_and_above_the_threshold_are_compressed_below_are_not() -> Result<()> {
    for layer in layers() {
        let (raw, backend) = pair(layer.threshold(64));
        for len in [0, 1, 63, 64, 65, 4096, 256 << 10] {
            let value: Vec<u8> = b"abcd".iter().copied().cycle().take(len).collect();
            backend.put(b"k", &value).await?;
            assert_eq!(backend.get(b"k").await?.as_deref(), Some(&value[..]));
            let kept = stored(&raw, b"k").await;
            if len < 64 {
                assert_eq!(kept, value, "{layer:?} {len}: stored as is");
            } else {
                assert!(kept.starts_with(&MAGIC), "{layer:?} {len}: framed");
                assert!(kept.len() < value.len(), "{layer:?} {len}: smaller");
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn random_data_is_kept_as_is_unless_it_begins_with_the_magic() -> Result<()> {
    for layer in layers() {
        let (raw, backend) = pair(layer.threshold(16));
        let value = random(16 << 10, 7);
        backend.put(b"r", &value).await?;
        assert_eq!(stored(&raw, b"r").await, value, "{layer:?}");
        assert_eq!(backend.get(b"r").await?.as_deref(), Some(&value[..]));
    }
    let (raw, backend) = pair(CompressionLayer::lz4().threshold(64));
    let mut big = random(4096, 3);
    big.splice(..0, MAGIC);
    for value in [MAGIC.to_vec(), [&MAGIC[..], b"\x01\x01abc"].concat(), big] {
        backend.put(b"m", &value).await?;
        let kept = stored(&raw, b"m").await;
        assert_eq!(kept.len(), value.len() + HEADER_LEN, "a stored frame");
        assert_eq!(kept.get(4), Some(&STORED));
        assert_eq!(backend.get(b"m").await?.as_deref(), Some(&value[..]));
    }
    Ok(())
}

#[tokio::test]
async fn values_written_without_the_layer_read_as_they_are() -> Result<()> {
    let (raw, backend) = pair(CompressionLayer::lz4().threshold(16));
    for value in [
        text(5000),
        random(5000, 9),
        Vec::new(),
        b"\xC5S\x01".to_vec(),
    ] {
        raw.put(b"old", &value).await?;
        assert_eq!(backend.get(b"old").await?.as_deref(), Some(&value[..]));
    }
    Ok(())
}

/// A frame header: magic, `version`, `algorithm`, `len`.
fn head(version: u8, algorithm: u8, len: u32) -> Vec<u8> {
    [&MAGIC[..], &[version, algorithm], &len.to_le_bytes()].concat()
}

#[tokio::test]
async fn damaged_frames_are_corrupt_errors_naming_the_key() -> Result<()> {
    let (raw, backend) = pair(CompressionLayer::lz4().threshold(16));
    let lz4 = lz4_flex::block::compress(&text(1000));
    let damaged = [
        MAGIC.to_vec(),
        [&MAGIC[..], &[1, 1, 0]].concat(),
        head(2, LZ4, 10),
        head(1, 9, 10),
        [head(1, STORED, 5), b"abcd".to_vec()].concat(),
        [
            head(1, LZ4, 1000),
            lz4.get(..lz4.len() / 2).unwrap_or_default().to_vec(),
        ]
        .concat(),
        [head(1, LZ4, 999), lz4.clone()].concat(),
        [head(1, LZ4, u32::MAX), lz4.clone()].concat(),
        [head(1, LZ4, 1 << 20), b"\xff\xff".to_vec()].concat(),
        [head(1, ZSTD, 1000), lz4.clone()].concat(),
    ];
    for value in damaged {
        raw.put(b"bad\xff", &value).await?;
        let err = backend.get(b"bad\xff").await.err();
        assert_eq!(
            err.as_ref().map(|e| e.kind()),
            Some(ErrorKind::Corrupt),
            "{value:?}"
        );
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("key `bad\\xff`"), "{msg}");
        let scanned = crate::stream::try_collect(backend.scan(b"")).await;
        assert_eq!(scanned.err().map(|e| e.kind()), Some(ErrorKind::Corrupt));
    }
    // Overwritten through the layer, the key reads again.
    backend.put(b"bad\xff", b"fine").await?;
    assert_eq!(
        backend.get(b"bad\xff").await?.as_deref(),
        Some(&b"fine"[..])
    );
    Ok(())
}

#[tokio::test]
async fn garbage_after_the_magic_never_panics() -> Result<()> {
    let (raw, backend) = pair(CompressionLayer::lz4().threshold(16));
    for seed in 1..600u64 {
        let len = (seed as usize * 7) % 300;
        let mut value = random(len, seed);
        let algorithm = (seed % 4) as u8;
        let claimed = (seed as u32 * 13) % 2000;
        value.splice(..0, head(1, algorithm, claimed));
        raw.put(b"g", &value).await?;
        // Any answer will do, as long as it comes back: errors are Corrupt.
        if let Err(e) = backend.get(b"g").await {
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn compare_and_swap_compares_values_not_stored_bytes() -> Result<()> {
    let (raw, backend) = pair(CompressionLayer::lz4().threshold(16));
    let (old, new) = (text(4000), text(3000));
    // Written before the layer: stored raw, expected value encodes differently.
    raw.put(b"c", &old).await?;
    assert!(backend.compare_and_swap(b"c", Some(&old), &new).await?);
    assert_eq!(backend.get(b"c").await?.as_deref(), Some(&new[..]));
    // Written through the layer: compressed.
    assert!(stored(&raw, b"c").await.starts_with(&MAGIC));
    assert!(backend.compare_and_swap(b"c", Some(&new), &old).await?);
    assert_eq!(backend.get(b"c").await?.as_deref(), Some(&old[..]));
    // Compressed with zstd by another writer: the same value still matches.
    zstd(5).layer(raw.clone()).put(b"c", &new).await?;
    assert!(backend.compare_and_swap(b"c", Some(&new), &old).await?);
    // A different value, or a missing key, does not match, and nothing changes.
    assert!(!backend.compare_and_swap(b"c", Some(&new), b"x").await?);
    assert_eq!(backend.get(b"c").await?.as_deref(), Some(&old[..]));
    assert!(!backend.compare_and_swap(b"none", Some(&new), b"x").await?);
    assert!(backend.compare_and_swap(b"none", None, &new).await?);
    assert!(!backend.compare_and_swap(b"none", None, &new).await?);
    Ok(())
}

#[tokio::test]
async fn every_path_in_and_out_is_encoded_and_decoded() -> Result<()> {
    let (raw, backend) = pair(zstd(1).threshold(16));
    let value = text(2000);
    let keys: [&[u8]; 3] = [b"a", b"b", b"c"];
    backend
        .batch_put(&[(keys[0], &value), (keys[1], b"small")])
        .await?;
    assert!(backend.set_if_not_exists(keys[2], &value, None).await?);
    backend.put_fenced(b"f", &value, FencingToken(3)).await?;
    backend
        .put_with_ttl(b"t", &value, Duration::from_secs(60))
        .await?;
    backend
        .put_with_metadata(b"m", &value, serde_json::json!({"v": 1}))
        .await?;
    for key in [keys[0], keys[2], b"f", b"t", b"m"] {
        assert!(stored(&raw, key).await.starts_with(&MAGIC));
    }
    let got = backend.batch_get(&keys).await?;
    assert_eq!(got[0].as_deref(), Some(&value[..]));
    assert_eq!(got[1].as_deref(), Some(&b"small"[..]));
    // Exports and checkpoints hold the values, portable to a backend without the layer.
    let exported = crate::stream::try_collect(backend.export(b"")).await?;
    assert!(
        exported
            .iter()
            .all(|e| e.value.len() == 2000 || &e.value[..] == b"small")
    );
    let checkpoint = backend.checkpoint().await?;
    assert_eq!(checkpoint.entries(), &exported[..]);
    let plain = MemoryBackend::new();
    plain.restore(checkpoint.clone()).await?;
    assert_eq!(plain.get(b"t").await?.as_deref(), Some(&value[..]));
    // Imports and restores are compressed on the way in.
    let (raw2, backend2) = pair(CompressionLayer::lz4().threshold(16));
    let entries = crate::stream::iter(exported.into_iter().map(Ok));
    assert_eq!(backend2.import(entries, ImportMode::Replace).await?, 6);
    assert!(stored(&raw2, b"f").await.starts_with(&MAGIC));
    backend2.restore(checkpoint).await?;
    assert!(stored(&raw2, b"m").await.starts_with(&MAGIC));
    assert_eq!(
        backend2.get_and_delete(b"m").await?.as_deref(),
        Some(&value[..])
    );
    Ok(())
}

#[tokio::test]
async fn limits_apply_to_the_value_before_compression() -> Result<()> {
    let limits = Limits {
        max_key_len: 64,
        max_value_len: 1000,
    };
    let raw = MemoryBackend::builder().limits(limits).build()?;
    let backend = CompressionLayer::lz4().threshold(16).layer(Arc::new(raw));
    let err = backend.put(b"k", &text(1001)).await.err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidInput));
    let err = backend
        .batch_put(&[(b"a", b"x"), (b"b", &text(1001))])
        .await
        .err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidInput));
    assert_eq!(
        backend.get(b"a").await?,
        None,
        "nothing written on a refusal"
    );
    backend.put(b"k", &text(1000)).await?;
    Ok(())
}

#[test]
fn only_large_values_are_probed_and_only_incompressible_ones_skip_compression() {
    for layer in layers() {
        let codec = Codec {
            layer,
            limits: Limits::default(),
        };
        assert!(
            codec.looks_incompressible(&random(PROBE_FROM, 5)),
            "{layer:?}"
        );
        assert!(
            codec.looks_incompressible(&random(256 << 10, 6)),
            "{layer:?}"
        );
        assert!(!codec.looks_incompressible(&text(PROBE_FROM)), "{layer:?}");
        assert!(
            !codec.looks_incompressible(&random(PROBE_FROM - 1, 5)),
            "{layer:?}: below the probe size the whole value is tried"
        );
        // Compressible text around a random middle: the probe's guess is to store it as is.
        let mut mixed = text(64 << 10);
        let middle = (mixed.len() - PROBE_LEN) / 2;
        mixed[middle..middle + PROBE_LEN].copy_from_slice(&random(PROBE_LEN, 8));
        assert!(codec.looks_incompressible(&mixed), "{layer:?}");
        assert!(
            matches!(codec.encode(&mixed), Ok(Cow::Borrowed(_))),
            "{layer:?}"
        );
    }
}
