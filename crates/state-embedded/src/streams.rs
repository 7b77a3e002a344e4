//! The scan and export streams.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use redb::ReadTransaction;
use state_core::{Entry, Result};
use tokio::sync::mpsc;

use crate::read;
use crate::record;
use crate::store::Store;
use crate::task;

/// How many keys a scan reads per read transaction.
pub(crate) const SCAN_PAGE: usize = 256;

/// How many entries an export buffers between its reader thread and the consumer.
const EXPORT_BUFFER: usize = 256;

/// A fuzzy scan in key order: each page is one short read transaction on the calling task,
/// resuming after the last key of the previous page, so memory stays bounded by a page and
/// no transaction outlives a poll.
pub(crate) struct ScanStream {
    store: Arc<Store>,
    prefix: Vec<u8>,
    strip: usize,
    after: Option<Vec<u8>>,
    page: VecDeque<Entry>,
    done: bool,
}

impl ScanStream {
    pub(crate) fn new(store: Arc<Store>, prefix: Vec<u8>, strip: usize) -> Self {
        ScanStream {
            store,
            prefix,
            strip,
            after: None,
            page: VecDeque::new(),
            done: false,
        }
    }
}

impl Stream for ScanStream {
    type Item = Result<Entry>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(entry) = self.page.pop_front() {
                return Poll::Ready(Some(Ok(entry)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            let this = &mut *self;
            match read::page(
                &this.store.db,
                &this.prefix,
                this.after.as_deref(),
                SCAN_PAGE,
                this.strip,
            ) {
                Ok((entries, last)) => {
                    this.page.extend(entries);
                    this.done = last.is_none();
                    this.after = last;
                }
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

enum ExportState {
    /// The snapshot is taken; the reader starts on the first poll.
    Ready(Box<ReadTransaction>),
    Running(mpsc::Receiver<Result<Entry>>),
    Done,
}

/// An export: one read transaction (a consistent snapshot) walked by a blocking reader that
/// feeds a bounded channel, so memory stays bounded whatever the size of the state.
pub(crate) struct ExportStream {
    state: ExportState,
    prefix: Vec<u8>,
    strip: usize,
    now_ms: u64,
}

impl ExportStream {
    pub(crate) fn new(txn: ReadTransaction, prefix: Vec<u8>, strip: usize) -> Self {
        ExportStream {
            state: ExportState::Ready(Box::new(txn)),
            prefix,
            strip,
            now_ms: record::now_ms(),
        }
    }

    fn start(&mut self, txn: Box<ReadTransaction>) -> mpsc::Receiver<Result<Entry>> {
        let (tx, rx) = mpsc::channel(EXPORT_BUFFER);
        let prefix = std::mem::take(&mut self.prefix);
        let (strip, now_ms) = (self.strip, self.now_ms);
        // The reader's own result is delivered through the channel; the task handle is not
        // needed. A dropped stream closes the channel, which stops the reader.
        drop(task::spawn(move || {
            let walked = read::data_table(&txn).and_then(|table| {
                read::for_each_live(&table, &prefix, None, now_ms, strip, |entry| {
                    tx.blocking_send(Ok(entry)).is_ok()
                })
            });
            if let Err(e) = walked {
                let _ = tx.blocking_send(Err(e));
            }
            Ok(())
        }));
        rx
    }
}

impl Stream for ExportStream {
    type Item = Result<Entry>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let ExportState::Ready(_) = this.state
            && let ExportState::Ready(txn) = std::mem::replace(&mut this.state, ExportState::Done)
        {
            this.state = ExportState::Running(this.start(txn));
        }
        match &mut this.state {
            ExportState::Running(rx) => {
                let polled = rx.poll_recv(cx);
                if let Poll::Ready(None) = polled {
                    this.state = ExportState::Done;
                }
                polled
            }
            _ => Poll::Ready(None),
        }
    }
}
