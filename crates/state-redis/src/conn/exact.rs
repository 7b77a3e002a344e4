//! The exact set's path in Cluster mode (blind writes, sent once by the driver): `ASK`
//! followed by us with `ASKING`, and pipelines of blind writes sent command by command so
//! that a slot migrating under them never hides which writes were applied.

use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisError, Value};

use super::Node;
use super::cluster::ask_target;

/// Sends `cmds` to `node`, each after `ASKING` (the target of an `ASK` redirection serves a
/// migrating slot's key only then); returns their replies.
async fn asking(
    conn: &mut ClusterConnection,
    node: &Node,
    cmds: &[Cmd],
) -> std::result::Result<Vec<Value>, RedisError> {
    let Some(route) = node.route() else {
        return Err(RedisError::from((
            redis::ErrorKind::Client,
            "ASK names no node",
        )));
    };
    let mut pipe = redis::pipe();
    for cmd in cmds {
        pipe.cmd("ASKING");
        pipe.add_command(cmd.clone());
    }
    let replies = conn.route_pipeline(pipe, 0, cmds.len() * 2, route).await?;
    // Every second reply is a command's; the others are ASKING's OK.
    Ok(replies.into_iter().skip(1).step_by(2).collect())
}

/// The node an `ASK` reply to a command names, whether the driver handed it back as an
/// error reply or (as the exact set, which never re-sends, does) as an error.
pub(super) fn ask_of(reply: &redis::RedisResult<Value>) -> Option<Node> {
    match reply {
        Ok(Value::ServerError(e)) => ask_target(&RedisError::from(e.clone())),
        Ok(_) => None,
        Err(e) => ask_target(e),
    }
}

/// The reply to `cmd` from `node`, which an `ASK` named (the command was not executed where
/// it was first sent), after `ASKING`.
///
/// Boxed and built outside the caller's `async fn`, so that the point operations' futures
/// (boxed once per call by `async_trait`) carry a pointer for this rare path, not its state.
pub(super) fn follow_ask<'a>(
    conn: &'a mut ClusterConnection,
    cmd: &'a Cmd,
    node: Node,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = redis::RedisResult<Value>> + Send + 'a>> {
    Box::pin(async move {
        asking(conn, &node, std::slice::from_ref(cmd))
            .await
            .map(|mut replies| replies.pop().unwrap_or(Value::Nil))
    })
}

/// The pipeline's commands, and its trailing `WAIT` apart: it must follow the writes on the
/// connections that carried them.
fn split_wait(pipe: &Pipeline) -> (Vec<&Cmd>, Option<&Cmd>) {
    let mut cmds: Vec<&Cmd> = pipe.cmd_iter().collect();
    let is_wait = |cmd: &&Cmd| {
        matches!(cmd.args_iter().next(),
            Some(redis::Arg::Simple(name)) if name.eq_ignore_ascii_case(b"WAIT"))
    };
    let wait = cmds.last().filter(|cmd| is_wait(cmd)).copied();
    if wait.is_some() {
        cmds.pop();
    }
    (cmds, wait)
}

/// Sends the commands of a blind-write pipeline of the exact set each on its own (at once:
/// the driver still pipelines them on the node's connection), and returns one reply per
/// command, following `ASK` per command. A trailing `WAIT` is sent after the writes to
/// every node that executed one (the slot's master, and an `ASK` target); its reply is the
/// fewest replicas any of them counted.
///
/// Why not as one pipeline: when any reply of a pipeline asks for action (`ASK`, `MOVED`,
/// `TRYAGAIN`…), the driver returns that error for the whole pipeline and drops the other
/// replies, so a pipeline that met a half-migrated slot could not tell which of its writes
/// were applied, and sending it again would apply those twice. One by one, a command whose
/// reply asks for action was not executed: it comes back as its error reply, which the
/// retry of [`crate::RedisStateBackend`] sends again alone, while the others keep their
/// replies. A failure that is not a reply (a broken connection) fails the whole call, with
/// an unknown outcome.
pub(super) async fn one_by_one(
    conn: &ClusterConnection,
    pipe: &Pipeline,
) -> std::result::Result<Vec<Value>, RedisError> {
    let (cmds, wait) = split_wait(pipe);
    let sends = cmds.iter().map(|&cmd| {
        let mut conn = conn.clone();
        async move {
            let reply = conn.req_packed_command(cmd).await;
            match ask_of(&reply) {
                None => (reply, None),
                Some(node) => (follow_ask(&mut conn, cmd, node.clone()).await, Some(node)),
            }
        }
    });
    let results = futures_util::future::join_all(sends).await;
    let mut replies = Vec::with_capacity(results.len() + 1);
    let mut broken = None;
    let mut asked = Vec::new();
    for (result, node) in results {
        asked.extend(node);
        match result {
            Ok(value) => replies.push(value),
            Err(err) => match as_error_reply(err) {
                Ok(value) => replies.push(value),
                Err(err) => broken = broken.or(Some(err)),
            },
        }
    }
    if broken.is_none()
        && let Some(wait) = wait
    {
        match wait_on_writers(conn, &cmds, &asked, wait).await {
            Ok(acked) => replies.push(acked),
            Err(err) => broken = Some(err),
        }
    }
    match broken {
        None => Ok(replies),
        // Others of the batch may have been applied: never report it as not sent.
        Some(err) if err.is_connection_refusal() && replies.iter().any(|r| !is_reply_error(r)) => {
            Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                format!(
                    "a node of the batch could not be reached ({err}) after others were written"
                ),
            )))
        }
        Some(err) => Err(err),
    }
}

/// `WAIT` on the master of the writes' slot and on every node an `ASK` sent a write to;
/// the fewest replicas any counted.
async fn wait_on_writers(
    conn: &ClusterConnection,
    cmds: &[&Cmd],
    asked: &[Node],
    wait: &Cmd,
) -> std::result::Result<Value, RedisError> {
    let first_key = cmds.first().and_then(|cmd| match cmd.args_iter().nth(1) {
        Some(redis::Arg::Simple(key)) => Some(key),
        _ => None,
    });
    let mut routes = Vec::new();
    if let Some(key) = first_key {
        routes.push(SingleNodeRoutingInfo::SpecificNode(
            redis::cluster_routing::Route::new(
                crate::keys::slot(key),
                redis::cluster_routing::SlotAddr::Master,
            ),
        ));
    }
    let mut seen: Vec<&Node> = Vec::new();
    for node in asked {
        if !seen.contains(&node) {
            seen.push(node);
            routes.extend(node.route());
        }
    }
    let mut fewest: Option<i64> = None;
    for route in routes {
        let mut conn = conn.clone();
        match conn
            .route_command(wait.clone(), RoutingInfo::SingleNode(route))
            .await?
        {
            Value::Int(n) => fewest = Some(fewest.map_or(n, |f| f.min(n))),
            other => return Ok(other),
        }
    }
    Ok(fewest.map_or(Value::Int(0), Value::Int))
}

/// A server's error reply that the driver turned into an error, as the reply it was.
fn as_error_reply(err: RedisError) -> std::result::Result<Value, RedisError> {
    if !matches!(err.kind(), redis::ErrorKind::Server(_)) {
        return Err(err);
    }
    match err.clone().into_server_errors().as_deref() {
        Some([(_, one)]) => Ok(Value::ServerError(one.clone())),
        _ => Err(err),
    }
}

fn is_reply_error(value: &Value) -> bool {
    matches!(value, Value::ServerError(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trailing_wait_is_split_from_the_writes() {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg("a")
            .arg("1")
            .cmd("SET")
            .arg("b")
            .arg("2");
        let (cmds, wait) = split_wait(&pipe);
        assert_eq!((cmds.len(), wait.is_some()), (2, false));
        pipe.cmd("WAIT").arg(1).arg(500);
        let (cmds, wait) = split_wait(&pipe);
        assert_eq!((cmds.len(), wait.is_some()), (2, true));
    }

    #[test]
    fn redirects_become_error_replies_and_broken_connections_stay_errors() {
        let ask = match redis::parse_redis_value(b"-ASK 3999 127.0.0.1:7002\r\n") {
            Ok(Value::ServerError(e)) => RedisError::from(e),
            other => panic!("{other:?}"),
        };
        match as_error_reply(ask) {
            Ok(Value::ServerError(e)) => assert_eq!(e.code(), "ASK"),
            other => panic!("{other:?}"),
        }
        let io = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        assert!(as_error_reply(io).is_err());
    }
}
