//! The `CheckpointStore` contract, written once and run on every store, then what only a
//! directory can show (concurrent commits, files left by a crash).

mod common;

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use common::{assert_corrupt, many_entries};
use state_checkpoint::object_store::local::LocalFileSystem;
use state_checkpoint::object_store::memory::InMemory;
use state_checkpoint::object_store::path::Path as ObjectPath;
use state_checkpoint::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use state_checkpoint::{
    CheckpointId, CheckpointStore, Compression, DirStore, Manifest, MemoryStore,
    ObjectCheckpointStore, PostgresCheckpointStore, decode, encode,
};
use state_core::{BoxStream, Entry, ErrorKind, Result, StateError, stream};

/// Plants a raw object (a damaged manifest, a stray file) the way the store would name it.
type Plant<'a> = &'a (dyn Fn(&str, &[u8]) + Sync);

fn id(token: u64, seq: u64) -> CheckpointId {
    CheckpointId { token, seq }
}

/// Writes the data of `id` from `entries`; returns the manifest that would commit it.
async fn write(store: &dyn CheckpointStore, id: CheckpointId, entries: Vec<Entry>) -> Manifest {
    let (chunks, summary) = encode(stream::iter(entries.into_iter().map(Ok)), Compression::Lz4);
    store.write_data(id, chunks).await.expect("write_data");
    let summary = summary.get().expect("summary");
    Manifest::new(id, &summary, Compression::Lz4, "memory", true)
}

async fn read(store: &dyn CheckpointStore, id: CheckpointId) -> Result<Vec<Entry>> {
    let chunks = store.read_data(id).await?;
    stream::try_collect(decode(&format!("{id}.data"), chunks)).await
}

fn ids(manifests: &[Manifest]) -> Vec<CheckpointId> {
    manifests.iter().map(|m| m.id).collect()
}

async fn orphan_ids(store: &dyn CheckpointStore) -> Vec<CheckpointId> {
    let orphans = store.orphans().await.expect("orphans");
    orphans.into_iter().map(|(id, _)| id).collect()
}

/// The contract every store keeps. `plant` writes a raw object into the store.
async fn contract(store: &dyn CheckpointStore, plant: Plant<'_>) {
    let started = SystemTime::now() - std::time::Duration::from_secs(1);
    let empty = store.manifests().await.expect("list an empty store");
    assert!(empty.valid.is_empty() && empty.invalid.is_empty());
    assert!(store.describe().contains("://"), "{}", store.describe());

    // Unknown ids: NotFound to read, deleting is fine.
    let err = store.read_data(id(1, 1)).await.err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::NotFound));
    store.delete(id(1, 1)).await.expect("delete of nothing");
    store
        .delete_data(id(1, 1))
        .await
        .expect("delete_data of nothing");

    // Data without a manifest is not a checkpoint; it is an orphan, with its age.
    let entries = many_entries(500);
    let manifest = write(store, id(1, 1), entries.clone()).await;
    assert!(store.manifests().await.expect("list").valid.is_empty());
    let orphans = store.orphans().await.expect("orphans");
    assert_eq!(orphans.len(), 1);
    assert_eq!(orphans[0].0, id(1, 1));
    assert!(orphans[0].1 >= started, "last written just now");
    assert_eq!(read(store, id(1, 1)).await.expect("read"), entries);

    // Commit is create-if-absent.
    assert!(store.commit(&manifest).await.expect("first commit"));
    assert!(!store.commit(&manifest).await.expect("second commit"));
    let listing = store.manifests().await.expect("list");
    assert_eq!(listing.valid, vec![manifest.clone()]);
    assert!(orphan_ids(store).await.is_empty(), "committed is no orphan");

    // A manifest never points at nothing.
    let lost = Manifest {
        id: id(1, 2),
        ..manifest.clone()
    };
    let err = store.commit(&lost).await.err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::NotFound));

    // Writing data again for an id replaces what a failed attempt left.
    write(store, id(2, 1), many_entries(3)).await;
    let second = write(store, id(2, 1), many_entries(7)).await;
    assert!(store.commit(&second).await.expect("commit 2-1"));
    assert_eq!(read(store, id(2, 1)).await.expect("read").len(), 7);

    // A failed write leaves no data behind.
    let failing: BoxStream<'_, Result<Bytes>> = stream::iter(vec![
        Ok(Bytes::from_static(b"partial")),
        Err(StateError::new(ErrorKind::Connection, "the scan broke")),
    ]);
    let err = store
        .write_data(id(3, 1), failing)
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Connection));
    assert!(!orphan_ids(store).await.contains(&id(3, 1)));
    assert_eq!(
        store.read_data(id(3, 1)).await.err().map(|e| e.kind()),
        Some(ErrorKind::NotFound)
    );

    // Latest is by (token, seq), whatever was written last.
    let old_leader = write(store, id(1, 5), many_entries(1)).await;
    assert!(store.commit(&old_leader).await.expect("commit 1-5"));
    let listing = store.manifests().await.expect("list");
    assert_eq!(ids(&listing.valid), vec![id(1, 1), id(1, 5), id(2, 1)]);
    assert_eq!(listing.latest().map(|m| m.id), Some(id(2, 1)));

    // Invalid manifests are reported, never fatal, and never picked as latest.
    let newer = id(9, 9);
    write(store, newer, many_entries(1)).await;
    plant(&format!("{newer}.manifest.json"), b"{\"id\": \"trunc");
    plant("not-an-id.manifest.json", b"{}");
    let mut future = manifest.clone();
    future.id = id(8, 1);
    future.format_version = 99;
    write(store, future.id, many_entries(1)).await;
    plant(
        &format!("{}.manifest.json", future.id),
        &serde_json::to_vec(&future).expect("json"),
    );
    // A manifest whose data is gone: the checkpoint is incomplete.
    let half = write(store, id(7, 1), many_entries(1)).await;
    assert!(store.commit(&half).await.expect("commit 7-1"));
    store.delete_data(id(7, 1)).await.expect("delete_data");
    plant("unrelated.txt", b"left alone");

    let listing = store
        .manifests()
        .await
        .expect("a listing despite bad manifests");
    assert_eq!(ids(&listing.valid), vec![id(1, 1), id(1, 5), id(2, 1)]);
    assert_eq!(listing.latest().map(|m| m.id), Some(id(2, 1)));
    let mut invalid: Vec<&str> = listing.invalid.iter().map(|(n, _)| n.as_str()).collect();
    invalid.sort();
    assert_eq!(
        invalid,
        vec![
            "00000000000000000007-0000000001.manifest.json",
            "00000000000000000008-0000000001.manifest.json",
            "00000000000000000009-0000000009.manifest.json",
            "not-an-id.manifest.json",
        ]
    );
    for (name, error) in &listing.invalid {
        assert_eq!(error.kind(), ErrorKind::Corrupt, "{name}: {error}");
        assert!(error.message().contains(name.as_str()), "{error}");
    }
    let future_error = listing
        .invalid
        .iter()
        .find(|(n, _)| n.starts_with("00000000000000000008-"));
    assert!(future_error.is_some_and(|(_, e)| e.message().contains("newer version")));

    // Deleting is idempotent, also half-done: the manifest goes first, then the data.
    store
        .delete(id(7, 1))
        .await
        .expect("delete a checkpoint without data");
    store.delete(id(7, 1)).await.expect("delete again");
    store.delete(id(1, 1)).await.expect("delete 1-1");
    store.delete(id(1, 1)).await.expect("delete 1-1 again");
    assert_eq!(
        store.read_data(id(1, 1)).await.err().map(|e| e.kind()),
        Some(ErrorKind::NotFound)
    );
    // An id with a manifest file is no orphan, even when the manifest is invalid (it may
    // be a newer version's): the caller decides about those from the listing.
    assert!(orphan_ids(store).await.is_empty());
    for bad in [id(8, 1), id(9, 9)] {
        store.delete(bad).await.expect("delete a broken checkpoint");
    }
    let listing = store.manifests().await.expect("list");
    assert_eq!(ids(&listing.valid), vec![id(1, 5), id(2, 1)]);
    assert_eq!(listing.invalid.len(), 1, "only the unnamed one is left");
}

#[tokio::test]
async fn the_memory_store_keeps_the_contract() {
    let store = MemoryStore::new();
    let planter = store.clone();
    contract(&store, &move |name, bytes| {
        planter.put_object(name, Bytes::copy_from_slice(bytes))
    })
    .await;
    assert_eq!(store.describe(), "memory://");
    assert!(
        store.object("unrelated.txt").is_some(),
        "foreign objects are left alone"
    );
}

#[tokio::test]
async fn the_dir_store_keeps_the_contract() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = DirStore::open(tmp.path().join("ckpt")).expect("open");
    let dir = store.path().to_path_buf();
    contract(&store, &move |name, bytes| {
        std::fs::write(dir.join(name), bytes).expect("plant a file")
    })
    .await;
    assert!(
        store.path().join("unrelated.txt").exists(),
        "foreign files are left alone"
    );
    let leftovers: Vec<String> = std::fs::read_dir(store.path())
        .expect("list")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A table of a schema of the test's own on the test PostgreSQL (created by the store on
/// first use, dropped at the end), with a password in the URL that nothing repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_store_keeps_the_contract() {
    let base = testing::services::postgres_url()
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL for the store tests: {e}"));
    let schema = format!("ckstore_contract_{}", std::process::id());
    let with_password = base.replacen("postgres@", "postgres:hunter2@", 1);
    let separator = if with_password.contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!("{with_password}{separator}schema={schema}&table=ckpt");
    let store = PostgresCheckpointStore::from_url(&url).expect("open");
    let planter = store.clone();
    let tested = tokio::spawn(async move {
        let store = &planter;
        contract(store, &|name, bytes| {
            let put = store.put_object(name, bytes);
            tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(put))
                .expect("plant an object");
        })
        .await;
        let listing = store.manifests().await.expect("list");
        assert!(
            listing.invalid.iter().all(|(n, _)| n != "unrelated.txt"),
            "foreign objects are no manifests"
        );
        // The object left alone is still there: planting it again replaces one row.
        store
            .put_object("unrelated.txt", b"again")
            .await
            .expect("replace");
    })
    .await;
    let shown = format!("{} {store:?}", store.describe());
    assert!(
        shown.contains(&schema) && !shown.contains("hunter2"),
        "{shown}"
    );
    store.close().await;
    drop_schema(&base, &schema).await;
    if let Err(e) = tested {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Drops a test's schema on the test PostgreSQL.
async fn drop_schema(base: &str, schema: &str) {
    use state_postgres::sqlx::{self, Connection};
    let dropped = async {
        let mut conn = sqlx::PgConnection::connect(base).await?;
        let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await?;
        conn.close().await
    }
    .await;
    if let Err(e) = dropped {
        eprintln!("could not drop schema {schema}: {e}");
    }
}

/// object_store's in-memory store, checkpoints at its root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_store_in_memory_keeps_the_contract() {
    let objects: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let store = ObjectCheckpointStore::new(Arc::clone(&objects), "", "memory-objects://");
    let planter = Arc::clone(&objects);
    contract(&store, &move |name, bytes| {
        let path = ObjectPath::from(name);
        let put = planter.put(&path, PutPayload::from(bytes.to_vec()));
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(put))
            .expect("plant an object");
    })
    .await;
    let unrelated = objects.head(&ObjectPath::from("unrelated.txt")).await;
    assert!(unrelated.is_ok(), "foreign objects are left alone");
}

/// object_store's local file system, checkpoints under a "directory" of the store, beside
/// objects that are not theirs (a sibling directory, a deeper one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_store_on_local_disk_keeps_the_contract() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let objects: Arc<dyn ObjectStore> = Arc::new(
        LocalFileSystem::new_with_prefix(tmp.path())
            .expect("a local object store")
            .with_fsync(true),
    );
    let beside = [
        "team/other/00000000000000000001-0000000001.data",
        "team/ckpt/deeper/00000000000000000001-0000000001.manifest.json",
    ];
    for name in beside {
        objects
            .put(
                &ObjectPath::from(name),
                PutPayload::from_static(b"not ours"),
            )
            .await
            .expect("an object beside");
    }
    let store = ObjectCheckpointStore::new(Arc::clone(&objects), "team/ckpt", "local://team/ckpt");
    let dir = tmp.path().join("team/ckpt");
    contract(&store, &move |name, bytes| {
        std::fs::write(dir.join(name), bytes).expect("plant a file")
    })
    .await;
    for name in beside.into_iter().chain(["team/ckpt/unrelated.txt"]) {
        let left = objects.head(&ObjectPath::from(name)).await;
        assert!(left.is_ok(), "{name} is left alone");
    }
    // Nothing is left half-written: no staging file of an upload.
    let staged: Vec<String> = std::fs::read_dir(tmp.path().join("team/ckpt"))
        .expect("list")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains('#'))
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
}

/// Two writers committing one id at the same time, on a directory and on object storage:
/// exactly one wins, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_to_an_object_store_have_one_winner() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let local: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(tmp.path()).expect("a local object store"));
    for objects in [local, Arc::new(InMemory::new()) as Arc<dyn ObjectStore>] {
        let store = Arc::new(ObjectCheckpointStore::new(objects, "c", "test://c"));
        for seq in 0..10 {
            let manifest = write(&*store, id(5, seq), many_entries(2)).await;
            let tasks: Vec<_> = (0..4)
                .map(|_| {
                    let (store, manifest) = (Arc::clone(&store), manifest.clone());
                    tokio::spawn(async move { store.commit(&manifest).await })
                })
                .collect();
            let mut wins = 0;
            for task in tasks {
                if task.await.expect("join").expect("commit") {
                    wins += 1;
                }
            }
            assert_eq!(wins, 1, "seq {seq}");
        }
        assert_eq!(store.manifests().await.expect("list").valid.len(), 10);
    }
}

/// A data file larger than one upload part (8 MiB) is sent in several parts and read
/// back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_data_goes_up_in_parts_and_comes_back_whole() {
    let store =
        ObjectCheckpointStore::new(Arc::new(InMemory::new()), "big", "memory-objects://big");
    let entries: Vec<Entry> = (0..20_000u32)
        .map(|i| {
            let value: Vec<u8> = (0..1000u32)
                .map(|j| (i.wrapping_mul(31) ^ j) as u8)
                .collect();
            Entry::new(format!("k{i:06}"), value)
        })
        .collect();
    let manifest = write(&store, id(1, 1), entries.clone()).await;
    assert!(store.commit(&manifest).await.expect("commit"));
    assert!(
        manifest.data_bytes > 16 * 1024 * 1024,
        "{}",
        manifest.data_bytes
    );
    assert_eq!(read(&store, id(1, 1)).await.expect("read"), entries);
}

/// Two writers committing one id at the same time: exactly one wins, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_of_one_id_have_one_winner() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DirStore::open(tmp.path()).expect("open"));
    for seq in 0..25 {
        let manifest = write(&*store, id(5, seq), many_entries(2)).await;
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (store, manifest) = (Arc::clone(&store), manifest.clone());
                tokio::spawn(async move { store.commit(&manifest).await })
            })
            .collect();
        let mut wins = 0;
        for task in tasks {
            if task.await.expect("join").expect("commit") {
                wins += 1;
            }
        }
        assert_eq!(wins, 1, "seq {seq}");
    }
    assert_eq!(store.manifests().await.expect("list").valid.len(), 25);
}

/// What a crash leaves in a directory: temp files of a write and of a commit, a zero-filled
/// data file. None is a checkpoint; the temps are orphans the sweep removes.
#[tokio::test]
async fn leftovers_of_a_crash_are_orphans_not_checkpoints() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = DirStore::open(tmp.path()).expect("open");
    let dir = store.path();
    std::fs::write(
        dir.join(format!("{}.data.tmp-0123456789abcdef", id(4, 1))),
        b"half a file",
    )
    .expect("plant");
    std::fs::write(
        dir.join(format!("{}.manifest.json.tmp-00ff", id(4, 2))),
        b"{",
    )
    .expect("plant");
    assert!(store.manifests().await.expect("list").valid.is_empty());
    assert_eq!(orphan_ids(&store).await, vec![id(4, 1), id(4, 2)]);
    for orphan in [id(4, 1), id(4, 2)] {
        store.delete_data(orphan).await.expect("sweep");
    }
    assert!(orphan_ids(&store).await.is_empty());
    assert_eq!(std::fs::read_dir(dir).expect("list").count(), 0);

    // A committed checkpoint whose data a crash zero-filled: Corrupt naming the file.
    let manifest = write(&store, id(6, 1), many_entries(100)).await;
    assert!(store.commit(&manifest).await.expect("commit"));
    let data = dir.join(format!("{}.data", id(6, 1)));
    let len = std::fs::metadata(&data).expect("stat").len() as usize;
    std::fs::write(&data, vec![0u8; len]).expect("zero-fill");
    let chunks = store.read_data(id(6, 1)).await.expect("read");
    let name = data.display().to_string();
    let result = stream::try_collect(decode(&name, chunks)).await;
    assert_corrupt(result, &name, "not a checkpoint");
}
