//! The commands of the pooled peers (`deadpool`, `bb8`) on a checked-out connection of the
//! `redis` crate: the same ones `multiplexed` sends.

use redis::aio::ConnectionLike;

use super::err;
use crate::harness::Res;

/// `SET key value`.
pub async fn put<C: ConnectionLike + Send>(conn: &mut C, key: &str, value: &[u8]) -> Res<()> {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async::<()>(conn)
        .await
        .map_err(err("SET"))
}

/// `GET key`, the value dropped through `black_box`.
pub async fn get<C: ConnectionLike + Send>(conn: &mut C, key: &str) -> Res<()> {
    let value: Option<Vec<u8>> = redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .map_err(err("GET"))?;
    std::hint::black_box(value);
    Ok(())
}

/// One pipeline of `SET`s.
pub async fn batch_put<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &[String],
    value: &[u8],
) -> Res<()> {
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.set(k.as_str(), value).ignore();
    }
    pipe.query_async::<()>(conn)
        .await
        .map_err(err("pipelined SET"))
}

/// One `MGET`, the values dropped through `black_box`.
pub async fn batch_get<C: ConnectionLike + Send>(conn: &mut C, keys: &[String]) -> Res<()> {
    let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
        .arg(keys)
        .query_async(conn)
        .await
        .map_err(err("MGET"))?;
    std::hint::black_box(values);
    Ok(())
}

/// The compare-and-swap script by `EVALSHA` (`SCRIPT LOAD` and retry on `NOSCRIPT`, as
/// `redis::Script` does); whether it swapped.
pub async fn cas<C: ConnectionLike + Send>(
    conn: &mut C,
    script: &redis::Script,
    key: &str,
    old: &[u8],
    new: &[u8],
) -> Res<bool> {
    let swapped: i64 = script
        .key(key)
        .arg(old)
        .arg(new)
        .invoke_async(conn)
        .await
        .map_err(err("EVALSHA"))?;
    Ok(swapped == 1)
}
