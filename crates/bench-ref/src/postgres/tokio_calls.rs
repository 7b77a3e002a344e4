//! The five benchmark statements on a tokio-postgres client and its prepared statement: a
//! deadpool checkout (`deadpool`) or a shared pipelining client (`pipelined`), so both
//! peers bind exactly the same parameters.

use tokio_postgres::{Client, Statement};

use super::{as_bytes, err, unique_sorted};
use crate::harness::Res;

pub async fn put(client: &Client, stmt: &Statement, key: &str, value: &[u8]) -> Res<()> {
    client
        .execute(
            stmt,
            &[
                &key.as_bytes(),
                &value,
                &None::<serde_json::Value>,
                &None::<f64>,
            ],
        )
        .await
        .map_err(err("put"))?;
    Ok(())
}

pub async fn get(client: &Client, stmt: &Statement, key: &str) -> Res<()> {
    let row = client
        .query_opt(stmt, &[&key.as_bytes()])
        .await
        .map_err(err("get"))?;
    std::hint::black_box(row);
    Ok(())
}

pub async fn batch_put(
    client: &Client,
    stmt: &Statement,
    keys: &[String],
    value: &[u8],
) -> Res<()> {
    let keys = unique_sorted(keys);
    let values: Vec<&[u8]> = keys.iter().map(|_| value).collect();
    client
        .execute(stmt, &[&keys, &values, &None::<f64>])
        .await
        .map_err(err("batch put"))?;
    Ok(())
}

pub async fn batch_get(client: &Client, stmt: &Statement, keys: &[String]) -> Res<()> {
    let rows = client
        .query(stmt, &[&as_bytes(keys)])
        .await
        .map_err(err("batch get"))?;
    std::hint::black_box(rows);
    Ok(())
}

pub async fn cas(
    client: &Client,
    stmt: &Statement,
    key: &str,
    old: &[u8],
    new: &[u8],
) -> Res<bool> {
    let done = client
        .execute(stmt, &[&key.as_bytes(), &new, &old, &None::<f64>])
        .await
        .map_err(err("cas"))?;
    Ok(done == 1)
}
