//! The lock conformance suite and the lock property on `PostgresDistributedLock` in Lease
//! mode (a row per lock, expiry by the database clock), on the test database.

mod pg_lock_common;

use state_lock::LockMode;
use testing::locks::LockSubject;

async fn lease_subject() -> LockSubject {
    let url = pg_lock_common::url().await;
    pg_lock_common::subject_at(&url, LockMode::Lease, "llease").await
}

testing::lock_conformance_suite!(lease_subject);
testing::lock_property_suite!(lease_subject);
