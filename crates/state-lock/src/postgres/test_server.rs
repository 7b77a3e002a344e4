//! The PostgreSQL the unit tests of the modes run against.

use std::time::Duration;

/// The direct URL of a PostgreSQL for unit tests: the local one, or the test services'.
pub(super) async fn test_url() -> String {
    let local = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect("127.0.0.1:5432"),
    )
    .await;
    if std::env::var(testing::services::POSTGRES_URL_ENV).is_err() && matches!(local, Ok(Ok(_))) {
        return "postgres://postgres@127.0.0.1:5432/test".to_string();
    }
    testing::services::postgres()
        .await
        .expect("a PostgreSQL for the tests")
        .url()
}
