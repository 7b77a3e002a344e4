//! Waits past an expiry, on both clocks.
//!
//! Expiry is wall-clock time on every backend that keeps it: the memory and redb backends
//! store an absolute `SystemTime`, Redis compares with its own Unix time, PostgreSQL with
//! `now()`. A test that waits on the monotonic clock alone assumes the two advance
//! together, and they need not: when NTP or a VM's host sets the wall clock back, a key
//! lives longer by that much, correctly. So a test that must see a key gone waits until
//! *both* clocks have passed its deadline; a test that must see it still there has its
//! margin on the monotonic clock already, since a wall clock set back only lengthens it.

use std::time::{Duration, Instant, SystemTime};

/// How much longer than asked a wait may run while the wall clock catches up. Past it the
/// wait ends anyway, and the test's own assertion reports what it saw.
const WALL_CLOCK_PATIENCE: Duration = Duration::from_secs(10);

/// A start taken on the monotonic and the wall clock at once.
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch {
    monotonic: Instant,
    wall: SystemTime,
}

impl Stopwatch {
    /// Starts now.
    pub fn start() -> Self {
        Self {
            monotonic: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// When it started, on the monotonic clock.
    pub fn started(&self) -> Instant {
        self.monotonic
    }

    /// How far the wall clock has moved apart from the monotonic one since the start, either
    /// way: zero while the two run together, the size of the step after NTP or a VM's host
    /// set the wall clock.
    pub fn wall_clock_step(&self) -> Duration {
        let monotonic = self.monotonic.elapsed();
        match SystemTime::now().duration_since(self.wall) {
            Ok(wall) => wall.abs_diff(monotonic),
            // Set back past the start itself.
            Err(behind) => monotonic + behind.duration(),
        }
    }

    /// Waits until `elapsed` has passed since the start on both clocks (bounded: at most
    /// 10 s beyond `elapsed` for a wall clock that was set back).
    pub async fn wait_until(&self, elapsed: Duration) {
        tokio::time::sleep_until((self.monotonic + elapsed).into()).await;
        let give_up = self.monotonic + elapsed + WALL_CLOCK_PATIENCE;
        loop {
            let wall = SystemTime::now()
                .duration_since(self.wall)
                .unwrap_or(Duration::ZERO);
            let Some(behind) = elapsed.checked_sub(wall).filter(|d| !d.is_zero()) else {
                return;
            };
            let now = Instant::now();
            if now >= give_up {
                eprintln!(
                    "the wall clock is {behind:?} behind the monotonic one after \
                     {WALL_CLOCK_PATIENCE:?} more; an expiry may not have passed yet"
                );
                return;
            }
            tokio::time::sleep(behind.min(give_up - now)).await;
        }
    }
}

/// Milliseconds on the machine's monotonic clock (`CLOCK_MONOTONIC`): comparable between
/// the processes of one machine, unlike an `Instant`, and never stepped, unlike the wall
/// clock. For ordering in real time what several processes did.
pub fn monotonic_ms() -> u128 {
    use nix::time::{ClockId, clock_gettime};
    // This clock cannot fail to read on Linux; 0 would only make an ordering check weaker.
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| Duration::from(t).as_millis())
}

/// Sleeps `d` on both clocks: what a test waits before it expects an expiry `d` away (or
/// less) to have passed.
pub async fn sleep_past(d: Duration) {
    Stopwatch::start().wait_until(d).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_lasts_at_least_as_long_on_both_clocks() {
        let d = Duration::from_millis(30);
        let watch = Stopwatch::start();
        sleep_past(d).await;
        assert!(watch.started().elapsed() >= d);
        let wall = SystemTime::now()
            .duration_since(watch.wall)
            .unwrap_or(Duration::ZERO);
        assert!(wall >= d, "the wall clock moved only {wall:?}");
        assert!(
            watch.wall_clock_step() < Duration::from_millis(2),
            "the clocks parted by {:?} in a 30ms sleep",
            watch.wall_clock_step()
        );
    }

    #[tokio::test]
    async fn the_shared_monotonic_clock_moves_with_instants() {
        let (before, started) = (monotonic_ms(), Instant::now());
        tokio::time::sleep(Duration::from_millis(30)).await;
        let moved = monotonic_ms() - before;
        let elapsed = started.elapsed().as_millis();
        assert!(
            moved >= 29 && moved <= elapsed + 1,
            "{moved} ms on CLOCK_MONOTONIC, {elapsed} ms on the Instant"
        );
    }
}
