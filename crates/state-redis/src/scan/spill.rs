//! Exact de-duplication of scanned keys in bounded memory: an external merge sort.
//!
//! Keys go into a buffer of at most [`BUFFER_BYTES`]. A full buffer is sorted, its repeated
//! keys dropped, and written to an anonymous temporary file as a sorted run; [`FAN_IN`] runs
//! of one level are merged into one run of the next level, so that the number of open runs
//! (and their read buffers) stays logarithmic in the number of keys. [`KeySpill::finish`]
//! merges what is left and yields every distinct key once, in byte order.
//!
//! Whole keys are compared, never fingerprints: no collision can drop a key. A scan that fits
//! in the buffer never touches the disk. The files live in the system temporary directory
//! (`TMPDIR`), take about the size of the keys plus 8 bytes a key, and are unlinked from the
//! start, so they vanish when dropped or when the process dies.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};

use state_core::{ErrorKind, Result, StateError};

/// The in-memory buffer: key bytes plus [`SLOT_BYTES`] a key.
pub(crate) const BUFFER_BYTES: usize = 4 << 20;
/// Runs merged at once (each with an [`IO_BUFFER`] read buffer).
const FAN_IN: usize = 16;
const IO_BUFFER: usize = 64 << 10;
const SLOT_BYTES: usize = size_of::<Slot>();
/// Redis keys are at most 512 MB; a longer record in a spill file means the file is damaged.
const MAX_KEY: usize = 512 << 20;

/// A key in the buffer: its bytes in the arena and the index of the node that returned it.
#[derive(Clone, Copy)]
struct Slot {
    start: usize,
    len: usize,
    node: u32,
}

struct Run {
    level: u32,
    file: File,
}

/// Collects keys (with the index of the node that holds them) and hands them back distinct.
pub(crate) struct KeySpill {
    arena: Vec<u8>,
    slots: Vec<Slot>,
    runs: Vec<Run>,
    limit: usize,
}

impl KeySpill {
    /// A spill whose buffer holds about `limit` bytes (keys plus [`SLOT_BYTES`] a key).
    pub(crate) fn new(limit: usize) -> KeySpill {
        KeySpill {
            arena: Vec::new(),
            slots: Vec::new(),
            runs: Vec::new(),
            limit: limit.max(1),
        }
    }

    /// Adds `key`, found on node `node`; writes a sorted run to disk when the buffer is full.
    pub(crate) async fn push(&mut self, key: &[u8], node: u32) -> Result<()> {
        self.slots.push(Slot {
            start: self.arena.len(),
            len: key.len(),
            node,
        });
        self.arena.extend_from_slice(key);
        if self.arena.len() + self.slots.len() * SLOT_BYTES >= self.limit {
            self.spill().await?;
        }
        Ok(())
    }

    /// How many sorted runs are on disk now (for tests of the spilling path).
    #[cfg(test)]
    fn runs(&self) -> usize {
        self.runs.len()
    }

    async fn spill(&mut self) -> Result<()> {
        let arena = std::mem::take(&mut self.arena);
        let slots = std::mem::take(&mut self.slots);
        let (mut arena, mut slots, file) = off_thread(move || {
            let mut slots = slots;
            sort_distinct(&arena, &mut slots);
            let file = write_run(&arena, &slots)?;
            Ok((arena, slots, file))
        })
        .await?;
        // The buffers are kept (emptied) so that the next run reuses their memory.
        arena.clear();
        slots.clear();
        self.arena = arena;
        self.slots = slots;
        self.runs.push(Run { level: 0, file });
        // Merge FAN_IN runs of one level into one of the next: runs are pushed in order, so
        // the runs of the lowest level are always the last ones.
        while let Some(level) = self.runs.last().map(|r| r.level) {
            let same = self
                .runs
                .iter()
                .rev()
                .take_while(|r| r.level == level)
                .count();
            if same < FAN_IN {
                break;
            }
            let merged: Vec<File> = self
                .runs
                .drain(self.runs.len() - same..)
                .map(|r| r.file)
                .collect();
            let file = off_thread(move || merge_to_file(merged)).await?;
            self.runs.push(Run {
                level: level + 1,
                file,
            });
        }
        Ok(())
    }

    /// Every distinct key pushed, once, in byte order, with the node of one of its pushes.
    pub(crate) async fn finish(mut self) -> Result<Distinct> {
        if self.runs.is_empty() {
            let (arena, mut slots) = (self.arena, self.slots);
            let (arena, slots) = off_thread(move || {
                sort_distinct(&arena, &mut slots);
                Ok((arena, slots))
            })
            .await?;
            let source = Source::Memory {
                arena,
                slots: slots.into_iter(),
            };
            return Distinct::new(vec![source]);
        }
        if !self.slots.is_empty() {
            self.spill().await?;
        }
        let sources = self
            .runs
            .into_iter()
            .map(|r| Source::File(BufReader::with_capacity(IO_BUFFER, r.file)))
            .collect();
        Distinct::new(sources)
    }
}

/// The distinct keys of a [`KeySpill`], in byte order.
pub(crate) struct Distinct {
    sources: Vec<Source>,
    heap: BinaryHeap<Reverse<(Vec<u8>, usize, u32)>>,
    last: Option<Vec<u8>>,
}

impl Distinct {
    fn new(mut sources: Vec<Source>) -> Result<Distinct> {
        let mut heap = BinaryHeap::with_capacity(sources.len());
        for (i, source) in sources.iter_mut().enumerate() {
            if let Some((key, node)) = source.next_record()? {
                heap.push(Reverse((key, i, node)));
            }
        }
        Ok(Distinct {
            sources,
            heap,
            last: None,
        })
    }

    /// The next distinct key and its node index; `None` at the end. Reads the spill files
    /// (buffered, usually from the page cache).
    pub(crate) fn next_key(&mut self) -> Result<Option<(Vec<u8>, u32)>> {
        while let Some(Reverse((key, source, node))) = self.heap.pop() {
            if let Some(next) = self.sources.get_mut(source)
                && let Some((k, n)) = next.next_record()?
            {
                self.heap.push(Reverse((k, source, n)));
            }
            if self.last.as_ref() == Some(&key) {
                continue;
            }
            self.last = Some(key.clone());
            return Ok(Some((key, node)));
        }
        Ok(None)
    }
}

enum Source {
    Memory {
        arena: Vec<u8>,
        slots: std::vec::IntoIter<Slot>,
    },
    File(BufReader<File>),
}

impl Source {
    fn next_record(&mut self) -> Result<Option<(Vec<u8>, u32)>> {
        match self {
            Source::Memory { arena, slots } => {
                Ok(slots.next().map(|s| (key_of(arena, s).to_vec(), s.node)))
            }
            Source::File(reader) => read_record(reader).map_err(|e| spill_error("read", &e)),
        }
    }
}

fn key_of(arena: &[u8], slot: Slot) -> &[u8] {
    arena
        .get(slot.start..slot.start.saturating_add(slot.len))
        .unwrap_or_default()
}

/// Sorts the slots by key and keeps the first of each run of equal keys.
fn sort_distinct(arena: &[u8], slots: &mut Vec<Slot>) {
    slots.sort_unstable_by(|a, b| key_of(arena, *a).cmp(key_of(arena, *b)));
    slots.dedup_by(|later, earlier| key_of(arena, *later) == key_of(arena, *earlier));
}

/// A record: key length (u32 LE), node index (u32 LE), the key.
fn write_record(out: &mut impl Write, key: &[u8], node: u32) -> io::Result<()> {
    let len = u32::try_from(key.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "key over 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&node.to_le_bytes())?;
    out.write_all(key)
}

fn read_record(reader: &mut BufReader<File>) -> io::Result<Option<(Vec<u8>, u32)>> {
    if reader.fill_buf()?.is_empty() {
        return Ok(None);
    }
    let mut header = [0u8; 8];
    reader.read_exact(&mut header)?;
    let [l0, l1, l2, l3, n0, n1, n2, n3] = header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    if len > MAX_KEY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a record claims a {len}-byte key"),
        ));
    }
    let mut key = vec![0u8; len];
    reader.read_exact(&mut key)?;
    Ok(Some((key, u32::from_le_bytes([n0, n1, n2, n3]))))
}

fn new_file() -> io::Result<File> {
    tempfile::tempfile()
}

fn write_run(arena: &[u8], slots: &[Slot]) -> Result<File> {
    let write = || -> io::Result<File> {
        let mut out = BufWriter::with_capacity(IO_BUFFER, new_file()?);
        for slot in slots {
            write_record(&mut out, key_of(arena, *slot), slot.node)?;
        }
        finish_file(out)
    };
    write().map_err(|e| spill_error("write", &e))
}

/// Merges sorted runs into one, dropping repeated keys.
fn merge_to_file(files: Vec<File>) -> Result<File> {
    let sources = files
        .into_iter()
        .map(|f| Source::File(BufReader::with_capacity(IO_BUFFER, f)))
        .collect();
    let mut distinct = Distinct::new(sources)?;
    let mut out =
        BufWriter::with_capacity(IO_BUFFER, new_file().map_err(|e| spill_error("write", &e))?);
    while let Some((key, node)) = distinct.next_key()? {
        write_record(&mut out, &key, node).map_err(|e| spill_error("write", &e))?;
    }
    finish_file(out).map_err(|e| spill_error("write", &e))
}

/// Flushes `out` and rewinds its file for reading.
fn finish_file(out: BufWriter<File>) -> io::Result<File> {
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

fn spill_error(what: &str, e: &io::Error) -> StateError {
    StateError::new(
        ErrorKind::Backend,
        format!(
            "scan: cannot {what} a temporary file in {} ({e}); a large Redis scan sorts its \
             keys on disk to drop the duplicates SCAN may return: point TMPDIR at a writable \
             directory with room for the keys",
            std::env::temp_dir().display()
        ),
    )
}

/// Runs the sorting and file work on tokio's blocking pool (inline outside a runtime).
async fn off_thread<T, F>(work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.spawn_blocking(work).await.map_err(|e| {
            StateError::new(
                ErrorKind::Backend,
                format!("scan: the task sorting the scanned keys failed: {e}"),
            )
        })?,
        Err(_) => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn distinct(spill: KeySpill) -> Vec<(Vec<u8>, u32)> {
        let mut d = spill.finish().await.unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        while let Some(k) = d.next_key().unwrap_or_else(|e| panic!("{e}")) {
            out.push(k);
        }
        out
    }

    fn key(i: u32) -> Vec<u8> {
        // Keys of varied length, some prefixes of others, some binary.
        let mut k = format!("k{}", i % 5000).into_bytes();
        if i.is_multiple_of(3) {
            k.push(0xff);
        }
        k
    }

    #[tokio::test]
    async fn in_memory_drops_repeats_and_sorts() {
        let mut spill = KeySpill::new(BUFFER_BYTES);
        for k in [&b"b"[..], b"a", b"b", b"", b"a\0", b"a"] {
            spill.push(k, 7).await.unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(spill.runs(), 0);
        let got: Vec<Vec<u8>> = distinct(spill).await.into_iter().map(|(k, _)| k).collect();
        let want: Vec<Vec<u8>> = vec![b"".to_vec(), b"a".to_vec(), b"a\0".to_vec(), b"b".to_vec()];
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn spilled_runs_across_levels_keep_every_key_once() {
        // A 2 KB buffer: about 60 keys a run, so 40,000 pushes make hundreds of runs and
        // merge them across two levels; each key is pushed several times, in several runs.
        let mut spill = KeySpill::new(2048);
        let mut want: Vec<Vec<u8>> = Vec::new();
        for i in 0..40_000u32 {
            let k = key(i.wrapping_mul(2_654_435_761) % 40_000);
            spill
                .push(&k, i % 3)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            want.push(k);
        }
        assert!(spill.runs() > 1, "the test must spill");
        want.sort();
        want.dedup();
        let got = distinct(spill).await;
        let keys: Vec<Vec<u8>> = got.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys.len(), want.len());
        assert_eq!(keys, want);
        assert!(got.iter().all(|(_, n)| *n < 3));
    }

    #[test]
    fn works_outside_a_runtime() {
        let mut spill = KeySpill::new(64);
        let run = async {
            for i in 0..100u32 {
                spill.push(&key(i % 10), 0).await?;
            }
            spill.finish().await
        };
        let mut d = futures_util::FutureExt::now_or_never(run)
            .unwrap_or_else(|| panic!("pending without a runtime"))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut n = 0;
        while d.next_key().unwrap_or_else(|e| panic!("{e}")).is_some() {
            n += 1;
        }
        assert_eq!(n, 10);
    }
}
