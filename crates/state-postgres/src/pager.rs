//! Streams over a key range by keyset pagination: each page is `key >= next AND key <
//! upper ORDER BY key LIMIT n`, and the next page starts just after the last key seen
//! (`last || 0x00`), so memory stays bounded and no page rescans earlier rows.
//!
//! `scan` and `query_metadata` take a connection per page (fuzzy, as the trait allows).
//! `export` holds one connection in a `REPEATABLE READ READ ONLY` transaction for the whole
//! stream: every page reads the same snapshot.

use std::collections::VecDeque;

use futures_util::StreamExt;
use state_core::{BoxStream, Entry, Idempotency, Result};

use crate::conn::Checkout;
use crate::driver::PostgresStateBackend;
use crate::sql::successor;

/// Rows fetched per page.
pub(crate) const PAGE_ROWS: i64 = 500;

pub(crate) enum PagerKind {
    Scan,
    Export,
    Metadata(serde_json::Value),
}

pub(crate) struct Pager<'a> {
    backend: &'a PostgresStateBackend,
    kind: PagerKind,
    /// The lower bound of the next page; `None` once the range is exhausted.
    next: Option<Vec<u8>>,
    upper: Option<Vec<u8>>,
    buffered: VecDeque<Entry>,
    /// The export's transaction, open from the first page to the last.
    tx: Option<Checkout<'a>>,
}

impl<'a> Pager<'a> {
    pub fn new(backend: &'a PostgresStateBackend, prefix: &[u8], kind: PagerKind) -> Self {
        let (lower, upper) = backend.namespace_range(prefix);
        Pager {
            backend,
            kind,
            next: Some(lower),
            upper,
            buffered: VecDeque::new(),
            tx: None,
        }
    }

    pub fn into_stream(self) -> BoxStream<'a, Result<Entry>> {
        futures_util::stream::unfold(self, |mut pager| async move {
            pager.next_item().await.map(|item| (item, pager))
        })
        .boxed()
    }

    async fn next_item(&mut self) -> Option<Result<Entry>> {
        loop {
            if let Some(entry) = self.buffered.pop_front() {
                return Some(Ok(entry));
            }
            if self.next.is_none() {
                return self.finish().await.err().map(Err);
            }
            if let Err(err) = self.fill().await {
                self.next = None;
                // The transaction, if any, is dropped with its connection: the server rolls back.
                self.tx = None;
                return Some(Err(err));
            }
        }
    }

    async fn finish(&mut self) -> Result<()> {
        match self.tx.take() {
            Some(mut tx) => tx.commit("export").await,
            None => Ok(()),
        }
    }

    async fn fill(&mut self) -> Result<()> {
        let Some(lower) = self.next.take() else {
            return Ok(());
        };
        let rows = match &self.kind {
            PagerKind::Export => {
                if self.tx.is_none() {
                    let mut c = self.backend.checkout().await?;
                    c.begin("export", "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                        .await?;
                    self.tx = Some(c);
                }
                let query = page_query(self.backend, &self.kind, &self.upper, &lower);
                match self.tx.as_mut() {
                    Some(tx) => tx.fetch_all("export", query).await?,
                    None => Vec::new(),
                }
            }
            PagerKind::Scan | PagerKind::Metadata(_) => {
                let (backend, kind, upper, lower) = (self.backend, &self.kind, &self.upper, &lower);
                backend
                    .run("scan", Idempotency::Idempotent, move || async move {
                        let mut c = backend.checkout().await?;
                        c.fetch_all("scan", page_query(backend, kind, upper, lower))
                            .await
                    })
                    .await?
            }
        };
        let full_page = rows.len() as i64 >= PAGE_ROWS;
        let mut last_key = None;
        for row in &rows {
            let entry = self.backend.entry_from_row(row)?;
            last_key = Some(entry.key.clone());
            self.buffered.push_back(entry);
        }
        if let (true, Some(last)) = (full_page, last_key) {
            self.next = Some(successor(&self.backend.full_key(&last)));
        }
        Ok(())
    }
}

fn page_query(
    backend: &PostgresStateBackend,
    kind: &PagerKind,
    upper: &Option<Vec<u8>>,
    lower: &[u8],
) -> crate::conn::PgQuery {
    let sql = &backend.inner.sql;
    let statement = match kind {
        PagerKind::Metadata(_) => sql.metadata_page.pick(upper),
        PagerKind::Scan | PagerKind::Export => sql.page.pick(upper),
    };
    let mut query = sqlx::query(statement).bind(lower.to_vec());
    if let Some(upper) = upper {
        query = query.bind(upper.clone());
    }
    if let PagerKind::Metadata(filter) = kind {
        query = query.bind(filter.clone());
    }
    query.bind(PAGE_ROWS)
}
