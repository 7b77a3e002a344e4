//! One proxied connection: a task that owns the client socket and the upstream socket and
//! copies bytes between them, doing whatever the connection's [`Mode`] says.
//!
//! Both directions run as futures inside this one task, borrowing halves of the sockets, so
//! the task can stop them at any point and still own both sockets: that is what lets it
//! reset the client (SO_LINGER 0), close only the upstream side, or keep a frozen
//! connection open without reading it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::control::{Control, Dir, Mode, Verdict};

/// The size of one read, hence the largest chunk forwarded at once.
const CHUNK: usize = 16 * 1024;
/// How many chunks one direction may hold while they wait out their latency.
const QUEUE: usize = 32;
/// How long connecting to the upstream may take before the client is reset.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Removes the connection from the table however its task ends, also when it is aborted
/// because the proxy was dropped.
struct Registration {
    ctl: Arc<Control>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.ctl.remove(self.id);
    }
}

/// How a connection ends.
enum End {
    /// Both sockets are closed normally.
    Close,
    /// The client gets an RST; the upstream socket is closed normally.
    Reset,
}

/// Why one direction stopped.
#[derive(Debug)]
enum PumpEnd {
    /// Its reader hit end of stream and everything queued was written (and, when
    /// forwarding, the end of stream passed on).
    Eof,
    /// A read or write failed.
    Failed,
    /// It discarded the reply an armed drop was waiting for; the connection is frozen.
    Frozen,
    /// The connection's mode says nothing moves any more.
    Stopped,
}

/// Which directions still read.
#[derive(Debug, Clone, Copy)]
struct Reading {
    /// The client has not ended its stream.
    client: bool,
    /// The upstream socket is open and has not ended its stream.
    upstream: bool,
}

/// What the connection task does after the directions stopped.
enum Step {
    /// Look at the mode again (it changed, or a direction ended).
    Again,
    /// End the connection normally.
    Close,
}

/// Serves one accepted client until it ends, connecting it to `upstream` unless the
/// connection was accepted into the black hole.
pub(super) async fn serve(
    ctl: Arc<Control>,
    id: u64,
    wake: Arc<Notify>,
    mut client: TcpStream,
    upstream_addr: SocketAddr,
) {
    let _registration = Registration {
        ctl: ctl.clone(),
        id,
    };
    let _ = client.set_nodelay(true);
    let mut upstream = None;
    if matches!(ctl.mode(id), Mode::Forward) {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream_addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                ctl.set_upstream_local(id, stream.local_addr().ok());
                upstream = Some(stream);
            }
            // A client of an unreachable server sees a refused connection: an RST.
            Ok(Err(_)) | Err(_) => {
                ctl.count_connect_failure();
                reset(&ctl, client);
                return;
            }
        }
    }
    let mut reading = Reading {
        client: true,
        upstream: upstream.is_some(),
    };
    let end = loop {
        match ctl.mode(id) {
            Mode::Closing => break End::Reset,
            Mode::Frozen(state) => {
                let mut released = state.released.subscribe();
                tokio::select! {
                    _ = released.wait_for(|r| *r) => break End::Reset,
                    () = wake.notified() => continue,
                }
            }
            Mode::HalfOpen => {
                // Dropping the socket sends the server a FIN; the client hears nothing.
                if upstream.take().is_some() {
                    ctl.set_upstream_local(id, None);
                }
                reading.upstream = false;
            }
            Mode::Forward | Mode::Swallow => {}
        }
        if !reading.client && !reading.upstream {
            break End::Close;
        }
        let step = run_directions(
            &ctl,
            id,
            &wake,
            &mut client,
            upstream.as_mut(),
            &mut reading,
        )
        .await;
        if let Step::Close = step {
            break End::Close;
        }
    };
    match end {
        End::Reset => reset(&ctl, client),
        End::Close => drop(client),
    }
    drop(upstream);
}

/// Aborts the client's connection with an RST rather than a FIN.
fn reset(ctl: &Control, client: TcpStream) {
    // SO_LINGER 0 makes close() discard unsent data and send RST. The lint warns that a
    // nonzero linger blocks on drop; a zero one never does. (`set_zero_linger` needs tokio
    // 1.50; the workspace still accepts 1.47.)
    #[allow(deprecated)]
    let linger = client.set_linger(Some(Duration::ZERO));
    if linger.is_ok() {
        ctl.count_reset();
    }
    drop(client);
}

/// Runs the directions that are still reading until the mode is changed from outside, a
/// direction fails or stops, or both have ended. A direction that ends its stream does not
/// cut the other short: replies still queued behind their latency are delivered.
async fn run_directions(
    ctl: &Control,
    id: u64,
    wake: &Notify,
    client: &mut TcpStream,
    upstream: Option<&mut TcpStream>,
    reading: &mut Reading,
) -> Step {
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = match upstream {
        Some(stream) => {
            let (r, w) = stream.split();
            (Some(r), Some(w))
        }
        None => (None, None),
    };
    let to_upstream = pump(
        ctl,
        id,
        Dir::ToUpstream,
        &mut client_read,
        upstream_write.as_mut(),
    );
    let to_client = async {
        match upstream_read.as_mut() {
            Some(reader) => pump(ctl, id, Dir::ToClient, reader, Some(&mut client_write)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(to_upstream, to_client);
    loop {
        let (dir, end) = tokio::select! {
            () = wake.notified() => return Step::Again,
            end = &mut to_upstream, if reading.client => (Dir::ToUpstream, end),
            end = &mut to_client, if reading.upstream => (Dir::ToClient, end),
        };
        match (dir, end) {
            (_, PumpEnd::Failed) => return Step::Close,
            (_, PumpEnd::Frozen | PumpEnd::Stopped) => return Step::Again,
            (Dir::ToUpstream, PumpEnd::Eof) => {
                reading.client = false;
                // A client leaving a connection that no longer forwards has nothing to
                // wait for.
                if !ctl.forwarding(id) {
                    return Step::Close;
                }
            }
            (Dir::ToClient, PumpEnd::Eof) => reading.upstream = false,
        }
        if !reading.client && !reading.upstream {
            return Step::Again;
        }
    }
}

/// A chunk waiting for its latency to pass.
type Chunk = (Option<Instant>, Vec<u8>);

/// Copies one direction: a reader queues chunks with the instant they are due, a writer
/// writes them in order once due, so latency delays every chunk without slowing the reads
/// or reordering bytes. Without a writer (no upstream socket) everything is discarded.
async fn pump<R, W>(
    ctl: &Control,
    id: u64,
    dir: Dir,
    reader: &mut R,
    writer: Option<&mut W>,
) -> PumpEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, rx) = mpsc::channel(QUEUE);
    let read = read_side(ctl, id, dir, reader, tx);
    let write = write_side(ctl, id, dir, rx, writer);
    tokio::pin!(read, write);
    tokio::select! {
        // The reader first: the writer can only finish after the reader dropped its sender.
        biased;
        end = &mut read => match end {
            PumpEnd::Eof => match write.await {
                Ok(()) => PumpEnd::Eof,
                Err(_) => PumpEnd::Failed,
            },
            other => other,
        },
        written = &mut write => match written {
            Ok(()) => PumpEnd::Eof,
            Err(_) => PumpEnd::Failed,
        },
    }
}

/// Reads chunks and queues those the connection's mode lets through.
async fn read_side<R: AsyncRead + Unpin>(
    ctl: &Control,
    id: u64,
    dir: Dir,
    reader: &mut R,
    tx: mpsc::Sender<Chunk>,
) -> PumpEnd {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => return PumpEnd::Eof,
            Ok(n) => n,
            Err(_) => return PumpEnd::Failed,
        };
        match ctl.verdict(id, dir, n) {
            Verdict::Forward(delay) => {
                let due = (!delay.is_zero()).then(|| Instant::now() + delay);
                if tx.send((due, buf[..n].to_vec())).await.is_err() {
                    return PumpEnd::Failed;
                }
            }
            Verdict::Swallow => {}
            Verdict::Dropped => return PumpEnd::Frozen,
            Verdict::Stop => return PumpEnd::Stopped,
        }
    }
}

/// Writes queued chunks once due, while the connection still forwards; after the reader's
/// end of stream, passes it on with a FIN.
async fn write_side<W: AsyncWrite + Unpin>(
    ctl: &Control,
    id: u64,
    dir: Dir,
    mut rx: mpsc::Receiver<Chunk>,
    mut writer: Option<&mut W>,
) -> io::Result<()> {
    while let Some((due, chunk)) = rx.recv().await {
        if let Some(due) = due {
            tokio::time::sleep_until(due).await;
        }
        // Checked after the delay: a fault injected meanwhile swallows the chunk.
        let Some(w) = writer.as_deref_mut().filter(|_| ctl.forwarding(id)) else {
            continue;
        };
        w.write_all(&chunk).await?;
        ctl.count_forwarded(dir, chunk.len());
    }
    if let Some(w) = writer.filter(|_| ctl.forwarding(id)) {
        w.shutdown().await?;
    }
    Ok(())
}
