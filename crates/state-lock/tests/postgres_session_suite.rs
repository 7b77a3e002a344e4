//! The lock conformance suite and the lock property on `PostgresDistributedLock` in
//! Session mode (a session advisory lock per guard), on the test database.

mod pg_lock_common;

use state_lock::LockMode;
use testing::locks::LockSubject;

async fn session_subject() -> LockSubject {
    let url = pg_lock_common::url().await;
    pg_lock_common::subject_at(&url, LockMode::Session, "lsess").await
}

testing::lock_conformance_suite!(session_subject);
testing::lock_property_suite!(session_subject);
