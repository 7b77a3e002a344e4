//! Streams over a key range by keyset pagination: each page is `key >= next AND key <
//! upper ORDER BY key LIMIT n`, and the next page starts just after the last key seen
//! (`last || 0x00`), so memory stays bounded and no page rescans earlier rows.
//!
//! `scan` and `query_metadata` take a connection per page (fuzzy, as the trait allows).
//! `export` reads one snapshot with one COPY instead (`export.rs`).

use std::collections::VecDeque;

use futures_util::StreamExt;
use state_core::{BoxStream, Entry, Idempotency, Result};

use crate::driver::PostgresStateBackend;
use crate::sql::successor;

/// Rows fetched per page.
pub(crate) const PAGE_ROWS: i64 = 500;

pub(crate) enum PagerKind {
    Scan,
    Metadata(serde_json::Value),
}

pub(crate) struct Pager<'a> {
    backend: &'a PostgresStateBackend,
    kind: PagerKind,
    /// The lower bound of the next page; `None` once the range is exhausted.
    next: Option<Vec<u8>>,
    upper: Option<Vec<u8>>,
    buffered: VecDeque<Entry>,
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
            self.next.as_ref()?;
            if let Err(err) = self.fill().await {
                self.next = None;
                return Some(Err(err));
            }
        }
    }

    async fn fill(&mut self) -> Result<()> {
        let Some(lower) = self.next.take() else {
            return Ok(());
        };
        let (backend, kind, upper, lower) = (self.backend, &self.kind, &self.upper, &lower);
        let rows = backend
            .run("scan", Idempotency::Idempotent, move || async move {
                let mut c = backend.read_checkout().await?;
                c.fetch_all("scan", page_query(backend, kind, upper, lower))
                    .await
            })
            .await?;
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
        PagerKind::Scan => sql.page.pick(upper),
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
