//! The five benchmark statements on any sqlx executor: a dedicated `&mut PgConnection`
//! (`connection`) or a `&PgPool` (`pgpool`), so both peers send exactly the same calls.

use sqlx::PgExecutor;

use super::{Sql, as_bytes, err, unique_sorted};
use crate::harness::Res;

pub async fn put<'e>(exec: impl PgExecutor<'e>, sql: &Sql, key: &str, value: &[u8]) -> Res<()> {
    sqlx::query(sqlx::AssertSqlSafe(sql.put.clone()))
        .bind(key.as_bytes())
        .bind(value)
        .bind(None::<serde_json::Value>)
        .bind(None::<f64>)
        .execute(exec)
        .await
        .map_err(err("put"))?;
    Ok(())
}

pub async fn get<'e>(exec: impl PgExecutor<'e>, sql: &Sql, key: &str) -> Res<()> {
    let row = sqlx::query(sqlx::AssertSqlSafe(sql.get.clone()))
        .bind(key.as_bytes())
        .fetch_optional(exec)
        .await
        .map_err(err("get"))?;
    std::hint::black_box(row);
    Ok(())
}

pub async fn batch_put<'e>(
    exec: impl PgExecutor<'e>,
    sql: &Sql,
    keys: &[String],
    value: &[u8],
) -> Res<()> {
    let keys = unique_sorted(keys);
    let values: Vec<&[u8]> = keys.iter().map(|_| value).collect();
    sqlx::query(sqlx::AssertSqlSafe(sql.batch_put.clone()))
        .bind(&keys)
        .bind(&values)
        .bind(None::<f64>)
        .execute(exec)
        .await
        .map_err(err("batch put"))?;
    Ok(())
}

pub async fn batch_get<'e>(exec: impl PgExecutor<'e>, sql: &Sql, keys: &[String]) -> Res<()> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.batch_get.clone()))
        .bind(as_bytes(keys))
        .fetch_all(exec)
        .await
        .map_err(err("batch get"))?;
    std::hint::black_box(rows);
    Ok(())
}

pub async fn cas<'e>(
    exec: impl PgExecutor<'e>,
    sql: &Sql,
    key: &str,
    old: &[u8],
    new: &[u8],
) -> Res<bool> {
    let done = sqlx::query(sqlx::AssertSqlSafe(sql.cas.clone()))
        .bind(key.as_bytes())
        .bind(new)
        .bind(old)
        .bind(None::<f64>)
        .execute(exec)
        .await
        .map_err(err("cas"))?;
    Ok(done.rows_affected() == 1)
}
