//! What the workers that claim leased work and deliver each item on its
//! own task share (the outbox worker's messages, the server's webhook
//! events): [`Slots`], their bounded concurrency (a worker claims no more
//! than it has free slots, each task holds one until its delivery is
//! recorded, a freed slot wakes the claiming loop, and shutdown waits,
//! bounded, for the tasks in hand), and [`backoff_ms`], the delay before a
//! failed item is tried again.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// The delay before attempt `attempts + 1` of an item that failed
/// `attempts` times: `base_ms` doubled per earlier failure (at most
/// `max_doublings` times) and capped at `max_ms` (at least 1), then
/// jittered in its upper half so that items which failed together spread
/// out.
pub fn backoff_ms(base_ms: i64, max_ms: i64, attempts: u32, max_doublings: u32) -> i64 {
    let exp = base_ms
        .saturating_mul(1i64 << attempts.saturating_sub(1).min(max_doublings))
        .min(max_ms)
        .max(1);
    let half = exp / 2;
    half + rand::rng().random_range(0..=exp - half)
}

/// Bounded delivery slots: see the module docs.
#[derive(Debug)]
pub struct Slots {
    capacity: u32,
    free: Arc<Semaphore>,
    wake: Arc<Notify>,
}

impl Slots {
    /// `capacity` deliveries at once.
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            free: Arc::new(Semaphore::new(capacity as usize)),
            wake: Arc::new(Notify::new()),
        }
    }

    /// How many items the loop may claim now.
    pub fn free(&self) -> u32 {
        u32::try_from(self.free.available_permits()).unwrap_or(u32::MAX)
    }

    /// Wakes the loop (new work was committed on this node); a wake with no
    /// loop waiting is kept for its next wait.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs `deliver(item)` on a task of its own for each item of `batch`
    /// while a slot is free. The task frees its slot when the delivery is
    /// done, and only then wakes the loop, which so finds the slot free.
    pub fn spawn_each<T, F>(&self, batch: impl IntoIterator<Item = T>, deliver: impl Fn(T) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        for item in batch {
            let Ok(slot) = self.free.clone().try_acquire_owned() else {
                break;
            };
            let delivery = deliver(item);
            let wake = self.wake.clone();
            tokio::spawn(async move {
                delivery.await;
                drop(slot);
                wake.notify_one();
            });
        }
    }

    /// Waits for a wake or `poll`, whichever comes first; `false` once
    /// `shutdown` is cancelled.
    pub async fn idle(&self, poll: Duration, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = self.wake.notified() => true,
            () = tokio::time::sleep(poll) => true,
        }
    }

    /// Waits up to `grace` for every delivery in hand to finish; `false`
    /// when some were still running.
    pub async fn drain(&self, grace: Duration) -> bool {
        tokio::time::timeout(grace, self.free.acquire_many(self.capacity))
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn backoff_doubles_within_its_upper_half_and_stops_at_the_cap() {
        for _ in 0..200 {
            assert!((500..=1000).contains(&backoff_ms(1000, 60_000, 1, 30)));
            assert!((2000..=4000).contains(&backoff_ms(1000, 60_000, 3, 30)));
            assert!((30_000..=60_000).contains(&backoff_ms(1000, 60_000, 40, 30)));
            // Two doublings at most: 4000, not 8000.
            assert!((2000..=4000).contains(&backoff_ms(1000, 60_000, 4, 2)));
            assert!((0..=1).contains(&backoff_ms(0, 60_000, 1, 30)));
        }
    }

    #[tokio::test]
    async fn a_batch_takes_only_the_free_slots_and_shutdown_waits_for_them() {
        let slots = Slots::new(2);
        let done = Arc::new(AtomicU32::new(0));
        let gate = Arc::new(Notify::new());
        slots.spawn_each(0..5, |_| {
            let (done, gate) = (done.clone(), gate.clone());
            async move {
                gate.notified().await;
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
        assert_eq!(slots.free(), 0, "two of five items took both slots");
        assert!(!slots.drain(Duration::from_millis(50)).await);
        gate.notify_waiters();
        assert!(slots.drain(Duration::from_secs(5)).await);
        assert_eq!(done.load(Ordering::SeqCst), 2);
        // Each freed slot woke the loop.
        let shutdown = CancellationToken::new();
        assert!(slots.idle(Duration::from_secs(5), &shutdown).await);
        shutdown.cancel();
        assert!(!slots.idle(Duration::from_secs(5), &shutdown).await);
    }
}
