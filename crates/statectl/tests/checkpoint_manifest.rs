//! What a checkpoint's manifest records, as `statectl checkpoint verify` and `restore`
//! report it: the key prefix it was taken under, and manifests written before prefixes
//! were recorded.

use std::path::Path;

use tempfile::TempDir;

mod common;

use common::{output, statectl, text};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Runs statectl on the embedded store `s.redb` in `dir`; (stdout, stderr), checking it
/// succeeded.
fn ok(dir: &Path, args: &[&str]) -> (String, String) {
    let out = output(statectl(dir, Some("redb:s.redb"), args), args);
    assert!(
        out.status.success(),
        "statectl {args:?} failed: {}",
        text(&out.stderr)
    );
    (text(&out.stdout), text(&out.stderr))
}

#[test]
fn verify_reports_the_prefix_and_an_old_manifest_is_restored_with_a_warning() -> TestResult {
    let dir = TempDir::new()?;
    let store_dir = dir.path().join("checkpoints");
    let store = format!("file://{}", store_dir.display());
    ok(dir.path(), &["put", "k", "v"]);
    let (id, _) = ok(dir.path(), &["checkpoint", "create", "--store", &store]);
    let id = id.trim();

    // The whole namespace: an empty prefix, recorded.
    let manifest = store_dir.join(format!("{id}.manifest.json"));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest)?)?;
    assert_eq!(json["key_prefix_hex"], "", "{json}");
    let (out, err) = ok(dir.path(), &["checkpoint", "verify", id, "--store", &store]);
    assert_eq!(out, format!("{id}\tok\tkey_prefix=\n"));
    assert_eq!(err, "");

    // A manifest written before the field existed: still valid, its prefix unrecorded.
    let mut old = json.clone();
    old.as_object_mut()
        .map(|fields| fields.remove("key_prefix_hex"));
    std::fs::remove_file(&manifest)?;
    std::fs::write(&manifest, serde_json::to_vec_pretty(&old)?)?;
    let (out, _) = ok(dir.path(), &["checkpoint", "verify", id, "--store", &store]);
    assert_eq!(out, format!("{id}\tok\tkey_prefix=unrecorded\n"));
    ok(dir.path(), &["put", "k", "changed"]);
    let (out, err) = ok(
        dir.path(),
        &["checkpoint", "restore", id, "--store", &store],
    );
    assert_eq!(out, "");
    assert!(
        err.starts_with("statectl: warning: ") && err.contains("does not record its key prefix"),
        "{err}"
    );
    assert_eq!(ok(dir.path(), &["get", "k"]).0, "v\n");
    Ok(())
}
