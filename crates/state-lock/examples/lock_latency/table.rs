//! The Markdown table (what `cargo xtask bench locks` puts in BENCHMARKS.md) and its notes.

use crate::measure::{Role, Row, SESSIONS};
use crate::{BLOCK, Options};

/// A cycle may cost at most this many round trips.
const ROUND_TRIP_GOAL: f64 = 2.5;
/// Our cycle may cost at most this many times the same operations on the raw driver.
const DRIVER_GOAL: f64 = 1.1;

pub fn table(rows: &[Row], opts: &Options) -> String {
    let mut out = header(opts);
    for row in rows {
        out.push_str(&line(row, driver_floor(rows, row.group)));
    }
    if opts.notes {
        out.push_str(NOTES);
    }
    out
}

fn header(opts: &Options) -> String {
    format!(
        "Uncontended `try_acquire` + `release` of one lock, one task, {} cycles per round, \
         median of {} rounds (each round {SESSIONS} sessions, PostgreSQL's on fresh \
         connections; blocks of {BLOCK} round trips and {BLOCK} cycles of each lock of a \
         server alternate, the first of each pass rotating; pgbench rows alternate per \
         round). Idle cores: {}. Goals: a \
         cycle costs at most {ROUND_TRIP_GOAL} round trips, and at most {DRIVER_GOAL} times \
         the same statements or scripts on the raw driver, measured in the same blocks (the \
         median of the rounds' ratios, their range in brackets).\n\n\
         | lock | round trip p50 / p99 (µs) | acquire+release p50 / p99 (µs) | p50 ratio | \
         p99 ratio | goal ≤ {ROUND_TRIP_GOAL} | cycle p50 ÷ raw driver's | goal ≤ {DRIVER_GOAL} |\n\
         |---|---:|---:|---:|---:|---|---:|---|\n",
        opts.iterations,
        opts.rounds,
        idle_cores(opts)
    )
}

fn idle_cores(opts: &Options) -> String {
    let state = if opts.poll_idle {
        "poll (`/dev/cpu_dma_latency` held at 0)"
    } else {
        "the kernel's default idle states"
    };
    match &opts.pin {
        Some(cores) => format!(
            "{state}; this process (and pgbench) pinned to core {}, both servers to core {}, \
             so every round trip wakes the other core",
            cores.client, cores.server
        ),
        None => state.to_string(),
    }
}

/// The raw-driver floor of `group`, if it has one.
fn driver_floor<'a>(rows: &'a [Row], group: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.group == group && r.role == Role::DriverFloor)
}

/// `row`'s cycle p50 over `floor`'s, round by round (both measured in the same blocks):
/// the median and the range.
struct PairedRatio {
    median: f64,
    low: f64,
    high: f64,
}

fn paired_ratio(row: &Row, floor: &Row) -> Option<PairedRatio> {
    let mut ratios: Vec<f64> = row
        .round_cycle_p50s
        .iter()
        .zip(&floor.round_cycle_p50s)
        .map(|(ours, floor)| ours / floor)
        .collect();
    ratios.sort_by(f64::total_cmp);
    Some(PairedRatio {
        median: *ratios.get(ratios.len() / 2)?,
        low: *ratios.first()?,
        high: *ratios.last()?,
    })
}

fn line(r: &Row, floor: Option<&Row>) -> String {
    let (x50, x99) = (
        r.cycle.p50 / r.round_trip.p50,
        r.cycle.p99 / r.round_trip.p99,
    );
    let round_trips = if x50 <= ROUND_TRIP_GOAL && x99 <= ROUND_TRIP_GOAL {
        "met"
    } else if x50 <= ROUND_TRIP_GOAL {
        "p50 met, p99 not"
    } else {
        "not met"
    };
    let vs_driver = floor
        .filter(|_| r.role != Role::DriverFloor)
        .and_then(|floor| paired_ratio(r, floor));
    let shown = vs_driver.as_ref().map_or("–".to_string(), |v| {
        format!("{:.2} ({:.2}–{:.2})", v.median, v.low, v.high)
    });
    let driver_goal = match (r.role, &vs_driver) {
        (Role::Ours, Some(v)) if v.median <= DRIVER_GOAL => "met",
        (Role::Ours, Some(_)) => "not met",
        _ => "–",
    };
    format!(
        "| {} | {:.0} / {:.0} | {:.0} / {:.0} | {x50:.2} | {x99:.2} | {round_trips} | \
         {shown} | {driver_goal} |\n",
        r.label, r.round_trip.p50, r.round_trip.p99, r.cycle.p50, r.cycle.p99
    )
}

const NOTES: &str = "\nWhat the rows show (measured on this machine, not assumed):\n\n\
- Each server's rows are measured together: blocks of round trips and of every lock's \
cycles alternate, each on its own connection, so they share the machine's noise; and \
every side reconnects several times per round, so that none keeps one server process's \
luck (its core, its neighbours) for a whole run. The ratio to the raw driver is taken \
round by round, each round's lock against the floor measured beside it. Floor rows \
run the same lock operations without this library: the two Redis scripts on the raw `redis` \
crate, and each PostgreSQL mode's acquire and release statements \
(`state_lock::postgres_statements`) prepared on a plain sqlx `PgConnection`, as our lock \
binds them. The pgbench rows run the same statements through `pgbench -M prepared`, a \
process of its own whose `SELECT 1` is its round trip. The column \"cycle p50 ÷ raw \
driver's\" divides a row's cycle by its server's raw-driver floor: what a library adds to \
the same operations.\n\
- Peers: `rslock` 0.10 is Redlock as its README uses it (`LockManager::new`, `lock`, \
`unlock`) on one server, so its quorum is that server; it issues no fencing token (a \
random value only), and its unlock is best effort and reports nothing. sqlx's \
`PgAdvisoryLock` (`try_acquire` on a connection, `release_now`) is a bare \
`pg_try_advisory_lock` / `pg_advisory_unlock` pair: no fencing token, no check that the \
connection still reaches the backend it opened on (a pooler), the caller keeps the \
connection. Both do less per cycle than our locks, which draw a fencing token.\n\
- Redis: a cycle is two Lua scripts, each one round trip. `INFO commandstats` shows the \
acquire script (owner check, fencing counter, `TIME`, `SET PX`) at about 5 µs of server \
time and the release at 1.4 µs, against 0.1 µs for `PING`.\n\
- PostgreSQL Session: acquire (`pg_try_advisory_lock` + `nextval`) and release \
(`pg_advisory_unlock`) are one prepared statement each. The p99 carries the sequence's WAL \
flush: `nextval` logs 32 values ahead, so every 32nd acquire commits with an fsync, which \
is what keeps tokens increasing across a server crash.\n\
- PostgreSQL Lease: acquire (an `INSERT … ON CONFLICT` upsert under a transaction-level \
advisory lock, with `nextval`) and release (a `DELETE`) are write transactions, prepared \
on a direct connection (through a pooler they are sent as simple queries and are slower); \
each costs 1.5 to 2.5 times a `SELECT 1` on the server, so two of them cannot fit in 2.5 \
round trips. Every cycle leaves a dead version of the lock's row, which the server can only \
prune once no open transaction is older: while another session of the server holds one \
open (idle in transaction), each cycle walks all the versions left since, and the same \
pgbench cycle took 1.09 ms against 0.59 ms before and 0.61 ms after a 9 s one. Ours and its \
floor pay this alike (blocks alternate, each on its own name), but it makes the lease \
rows' absolute numbers depend on what else runs on the server.\n\
- Idle cores: with the kernel's default idle states a VM's halted vCPU takes tens of µs to \
wake, and whether a round trip pays that depends on whether the client and the server \
happen to run on one core; a `SELECT 1` loop and a lock loop can land differently within \
one run, so those ratios are not comparable. With `--cpu-idle poll`, or with the client and \
the servers pinned to different cores (`--pin`), every side pays the same.\n";
