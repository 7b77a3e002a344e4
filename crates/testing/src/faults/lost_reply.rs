//! The retry rule's cases with a reply lost after the server executed the request
//! (RETRIES.md), shared by the `tests/retries.rs` of every networked backend.
//!
//! Each case arms [`FaultProxy::drop_next_reply`], sends one call through the proxy, waits
//! until the server has executed it, lets another client act, then releases the reset.

use std::sync::Arc;
use std::time::Duration;

use state_core::{ErrorKind, StateBackend};

use super::{FaultProxy, ReplyDrop};

/// How long a dropped reply may take to reach the proxy.
const ARRIVAL: Duration = Duration::from_secs(10);

type CaseResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// One backend reached through `proxy` and another, on the same namespace, reached
/// directly. The proxied one must have one connection, open, idle, and (for servers that
/// prepare statements) with every statement of the cases already prepared, so that the
/// reply the proxy drops is the one of the call under test.
#[derive(Debug)]
pub struct LostReply {
    /// The proxy in front of the server.
    pub proxy: FaultProxy,
    /// The backend under test, through the proxy.
    pub through: Arc<dyn StateBackend>,
    /// The same namespace, straight to the server: the other client.
    pub direct: Arc<dyn StateBackend>,
}

/// Waits until the proxy has dropped a reply: the server has executed the request.
pub async fn executed(lost: &ReplyDrop) -> CaseResult {
    tokio::time::timeout(ARRIVAL, lost.dropped())
        .await
        .map_err(|_| "the request never reached the server")?;
    Ok(())
}

impl LostReply {
    /// A `put` whose reply is lost, and whose item another client consumed meanwhile, is
    /// not applied a second time: it returns an outcome-unknown `Connection` error.
    pub async fn put_is_not_applied_twice(&self) -> CaseResult {
        let lost = self.proxy.drop_next_reply();
        let through = Arc::clone(&self.through);
        let put = tokio::spawn(async move { through.put(b"job", b"item-1").await });
        executed(&lost).await?;
        // A worker consumes the item while the writer's reply is in limbo.
        let taken = self.direct.get_and_delete(b"job").await?;
        assert_eq!(taken.as_deref(), Some(&b"item-1"[..]));
        lost.release();
        let outcome = put.await?;
        assert_eq!(
            self.direct.get(b"job").await?,
            None,
            "the put was applied a second time after its item was consumed ({outcome:?})"
        );
        let err = outcome
            .err()
            .ok_or("the put reported success for an unknown outcome")?;
        assert!(err.outcome_unknown(), "{err}");
        assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
        assert!(err.to_string().contains("may have been applied"), "{err}");
        Ok(())
    }

    /// A `batch_put` whose reply is lost, and whose rows another client deleted meanwhile,
    /// is not applied a second time.
    pub async fn batch_put_is_not_applied_twice(&self) -> CaseResult {
        let lost = self.proxy.drop_next_reply();
        let through = Arc::clone(&self.through);
        let put =
            tokio::spawn(async move { through.batch_put(&[(b"a", b"1"), (b"b", b"2")]).await });
        executed(&lost).await?;
        assert_eq!(self.direct.batch_delete(&[b"a", b"b"]).await?, 2);
        lost.release();
        let outcome = put.await?;
        assert_eq!(
            self.direct.batch_get(&[b"a", b"b"]).await?,
            vec![None, None],
            "the batch was applied a second time after its entries were deleted ({outcome:?})"
        );
        let err = outcome
            .err()
            .ok_or("the batch reported success for an unknown outcome")?;
        assert!(err.outcome_unknown(), "{err}");
        Ok(())
    }

    /// A `delete` whose reply is lost never reports `false` for a key it deleted.
    pub async fn delete_never_reports_false(&self) -> CaseResult {
        self.direct.put(b"k", b"v").await?;
        let lost = self.proxy.drop_next_reply();
        let through = Arc::clone(&self.through);
        let delete = tokio::spawn(async move { through.delete(b"k").await });
        executed(&lost).await?;
        lost.release();
        match delete.await? {
            Ok(deleted) => assert!(deleted, "the delete deleted the key and reported false"),
            Err(err) => assert!(err.outcome_unknown(), "{err}"),
        }
        assert_eq!(self.direct.get(b"k").await?, None);
        Ok(())
    }

    /// A read whose reply is lost is sent again and succeeds.
    pub async fn read_is_sent_again(&self) -> CaseResult {
        self.direct.put(b"k", b"v").await?;
        let lost = self.proxy.drop_next_reply();
        let through = Arc::clone(&self.through);
        let get = tokio::spawn(async move { through.get(b"k").await });
        executed(&lost).await?;
        lost.release();
        assert_eq!(get.await??.as_deref(), Some(&b"v"[..]));
        Ok(())
    }

    /// Removes what the cases wrote.
    pub async fn clean_up(&self) -> CaseResult {
        self.direct.clear(b"").await?;
        Ok(())
    }
}

/// The four lost-reply tests for a backend crate's `tests/retries.rs`, one `#[tokio::test]`
/// each (`a_put_whose_reply_is_lost_is_not_applied_twice`,
/// `a_batch_put_whose_reply_is_lost_is_not_applied_twice`,
/// `a_delete_whose_reply_is_lost_never_reports_false`,
/// `a_read_whose_reply_is_lost_is_sent_again`), each on a fresh [`LostReply`] from
/// `$subject`, an `async fn() -> Result<LostReply, Box<dyn Error + Send + Sync>>`.
#[macro_export]
macro_rules! lost_reply_suite {
    ($subject:path) => {
        $crate::__lost_reply_test!(
            $subject,
            a_put_whose_reply_is_lost_is_not_applied_twice,
            put_is_not_applied_twice
        );
        $crate::__lost_reply_test!(
            $subject,
            a_batch_put_whose_reply_is_lost_is_not_applied_twice,
            batch_put_is_not_applied_twice
        );
        $crate::__lost_reply_test!(
            $subject,
            a_delete_whose_reply_is_lost_never_reports_false,
            delete_never_reports_false
        );
        $crate::__lost_reply_test!(
            $subject,
            a_read_whose_reply_is_lost_is_sent_again,
            read_is_sent_again
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __lost_reply_test {
    ($subject:path, $name:ident, $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            let subject = $subject().await?;
            subject.$case().await?;
            subject.clean_up().await
        }
    };
}
