//! [`open_url`]: a checkpoint store named by a URL (`file:///dir`, `s3://bucket/dir`,
//! `postgres://…`).

use std::sync::Arc;

use state_core::{Result, StateError};

use super::{CheckpointStore, DirStore};

/// The store a URL names:
///
/// | URL | store | needs |
/// | --- | --- | --- |
/// | `file:///absolute/dir` | [`DirStore`] | |
/// | `postgres://[user@]host[:port]/db[?schema=S&table=T]` (`postgresql://`) | [`PostgresCheckpointStore`](super::PostgresCheckpointStore): a table, created on first use | |
/// | `s3://bucket[/dir]` (`s3a://`) | [`ObjectCheckpointStore`](super::ObjectCheckpointStore) on S3 | feature `aws` |
/// | `gs://bucket[/dir]` (`gcs://`) | … on Google Cloud Storage | feature `gcp` |
/// | `az://container[/dir]` (`azure://`, `abfs://`, `abfss://`) | … on Azure Blob Storage | feature `azure` |
///
/// Object stores take their credentials, region and endpoint from the environment, as
/// `object_store`'s `from_env` builders read them (`AWS_ACCESS_KEY_ID`, `AWS_REGION`,
/// `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`…; `GOOGLE_SERVICE_ACCOUNT`…; `AZURE_STORAGE_*`), never
/// from the URL: a URL with a user or password is refused, so no secret ends up in a
/// message. A `postgres://` URL may hold a user and password (as libpq's do); its store's
/// messages and [`describe`](CheckpointStore::describe) never repeat them. `Config` for a
/// scheme this build lacks (naming the feature), a relative path, an object store URL with
/// a query or a credential, or a `postgres://` URL with an unknown parameter.
pub fn open_url(url: &str) -> Result<Arc<dyn CheckpointStore>> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(StateError::config(
            "a checkpoint store URL looks like file:///absolute/dir, \
             postgres://host/database or s3://bucket/dir",
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme == "file" {
        return Ok(Arc::new(DirStore::from_url(url)?));
    }
    if scheme == "postgres" || scheme == "postgresql" {
        return Ok(Arc::new(super::PostgresCheckpointStore::from_url(url)?));
    }
    // Only the scheme is repeated in messages: the rest may carry a credential.
    let feature = match scheme.as_str() {
        "s3" | "s3a" => "aws",
        "gs" | "gcs" => "gcp",
        "az" | "azure" | "abfs" | "abfss" => "azure",
        _ => {
            return Err(StateError::config(format!(
                "{scheme}://… is not a checkpoint store; use file:///absolute/dir, \
                 postgres://, s3://, gs:// or az://"
            )));
        }
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.contains('@') {
        return Err(StateError::config(format!(
            "{scheme}://… holds a user or password; give credentials through the \
             environment (AWS_ACCESS_KEY_ID…, GOOGLE_SERVICE_ACCOUNT…, AZURE_STORAGE_…), \
             never in the URL"
        )));
    }
    if bucket.is_empty() || rest.contains(['?', '#']) {
        return Err(StateError::config(format!(
            "{scheme}://{bucket}/…: give a bucket and an optional directory, with no query \
             ({scheme}://bucket/dir)"
        )));
    }
    let prefix = prefix.trim_matches('/');
    let place = if prefix.is_empty() {
        format!("{scheme}://{bucket}")
    } else {
        format!("{scheme}://{bucket}/{prefix}")
    };
    object(feature, &scheme, bucket, prefix, place)
}

/// The object store of `feature` over `bucket`, if this build has it.
fn object(
    feature: &str,
    scheme: &str,
    bucket: &str,
    prefix: &str,
    place: String,
) -> Result<Arc<dyn CheckpointStore>> {
    let built: Option<object_store::Result<Arc<dyn object_store::ObjectStore>>> = match feature {
        #[cfg(feature = "aws")]
        "aws" => Some(
            object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map(|s| Arc::new(s) as _),
        ),
        #[cfg(feature = "gcp")]
        "gcp" => Some(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map(|s| Arc::new(s) as _),
        ),
        #[cfg(feature = "azure")]
        "azure" => Some(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_container_name(bucket)
                .build()
                .map(|s| Arc::new(s) as _),
        ),
        _ => None,
    };
    let _ = bucket;
    match built {
        Some(Ok(store)) => Ok(Arc::new(super::ObjectCheckpointStore::new(
            store, prefix, place,
        ))),
        Some(Err(e)) => Err(StateError::config(format!(
            "the checkpoint store {place} cannot be opened: {e}"
        ))
        .with_source(e)),
        None => Err(StateError::config(format!(
            "{scheme}:// checkpoint stores are not in this build: build it with the `{feature}` \
             feature of state-checkpoint (cargo build --features state-checkpoint/{feature}), \
             or keep checkpoints in a directory (file:///absolute/dir)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use state_core::ErrorKind;

    #[test]
    fn urls_are_refused_clearly_and_never_repeat_credentials() {
        for (url, says) in [
            ("s3://key:secret@bucket/x", "environment"),
            ("gs://secret@bucket", "environment"),
            ("s3://", "bucket"),
            ("s3://bucket/x?region=eu", "no query"),
            ("ftp://h/x", "not a checkpoint store"),
            ("/tmp/x", "looks like"),
            ("file://relative", "absolute"),
            ("postgres://u:secret@h/db?prefix=x", "not a parameter"),
            ("postgresql://u:secret@h/db?table=a-b", "plain identifier"),
        ] {
            let err = open_url(url).err();
            assert_eq!(
                err.as_ref().map(|e| e.kind()),
                Some(ErrorKind::Config),
                "{url}"
            );
            let message = err.map(|e| e.message().to_string()).unwrap_or_default();
            assert!(message.contains(says), "{url}: {message}");
            assert!(!message.contains("secret"), "{url}: {message}");
        }
        // Opened without a runtime and without connecting (the first call connects).
        let store = open_url("postgres://u:secret@h:5432/db?schema=s&sslmode=disable");
        let shown = store.map(|s| format!("{} {s:?}", s.describe()));
        let shown = shown.unwrap_or_else(|e| e.to_string());
        assert!(
            shown.starts_with("postgres://h:5432/db?schema=s&table=") && !shown.contains("secret"),
            "{shown}"
        );
        #[cfg(not(feature = "aws"))]
        {
            let err = open_url("s3://bucket/dir").err();
            let message = err.map(|e| e.message().to_string()).unwrap_or_default();
            assert!(message.contains("state-checkpoint/aws"), "{message}");
        }
    }
}
