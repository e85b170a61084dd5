//! The outbox worker: claims due messages from the store, hands each to the
//! first channel of its route that takes it, and records the result.
//!
//! Retries: a transient failure is retried with exponential backoff and
//! jitter until the verification expires; an unavailable channel fails over
//! to the next one at once; a permanent failure (or running out of validity)
//! fails the verification and refunds it, in the store's one transaction.
//!
//! At-least-once: a message is marked sent only after the gateway accepted
//! it. A crash between the two leaves the lease to expire, and the message is
//! sent again: that window is the one place a duplicate can happen.
//!
//! Handoff: a send on this node may [`Delivery::reserve`] a place with the
//! worker first; the store then writes the message already leased to this
//! worker (in the send's own transaction) and the server hands it over in memory
//! ([`Reservation::hand`]). That saves the claim's write and commit, and the
//! wait for it, on every message; a lease held by a node that dies runs out
//! and any worker claims the message again, exactly as after a claim.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use otpgate_core::Clock;
use otpgate_store::{InboxEntry, OutboxDepth, OutboxLease, OutboxMessage, OutboxStore, SentInfo};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::channel::{ChannelError, ChannelHealth, Outgoing};
use crate::observe::{DeliveryObserver, NoObserver};

/// How the worker paces itself.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Identifies this node's worker in leases.
    pub worker_id: String,
    /// Messages at their channels at once (claimed per round, or handed
    /// over).
    pub batch: u32,
    /// How long a claim lasts; a node that dies mid-delivery loses its
    /// messages to another node after this.
    pub lease_ms: i64,
    /// Poll interval when nothing wakes the worker (other nodes' sends,
    /// retries coming due).
    pub poll_ms: u64,
    /// First retry delay; doubles per attempt up to `retry_max_ms`.
    pub retry_base_ms: i64,
    pub retry_max_ms: i64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            worker_id: format!("node-{}", std::process::id()),
            batch: 64,
            lease_ms: 30_000,
            poll_ms: 250,
            retry_base_ms: 500,
            retry_max_ms: 30_000,
        }
    }
}

// The router's trait lives with the routes; re-exported here, where the
// worker that asks it has always been found.
pub use crate::router::{Router, SingleRoute};

/// A message handed over by a send, with the ticket it was reserved under.
type Handoff = (OutboxMessage, OwnedSemaphorePermit);

/// Results waiting for the store, per slot: enough for the store's commit
/// latency under load (measured: 64 slots held through the commit capped
/// the inbox channel at about 7,000 deliveries/s while sends ran at
/// 11,000/s), and bounded, since each one is a task and a queued write.
pub const RECORDINGS_PER_SLOT: usize = 4;

/// Recording places for `batch` slots.
fn recordings(batch: u32) -> usize {
    (batch as usize).saturating_mul(RECORDINGS_PER_SLOT)
}

/// What a delivery attempt came to: the write that records it.
enum Outcome {
    /// Accepted by `info.channel`; `entry`: the inbox entry a channel that
    /// delivers by storing has stored with the mark.
    Sent {
        info: SentInfo,
        entry: Option<InboxEntry>,
        now: i64,
    },
    /// To be tried again at `at`.
    Retry { at: i64, error: String, now: i64 },
    /// Given up on.
    Failed { error: String, now: i64 },
}

pub struct Delivery {
    store: Arc<dyn OutboxStore>,
    clock: Arc<dyn Clock>,
    router: Arc<dyn Router>,
    config: DeliveryConfig,
    wake: Notify,
    observer: Arc<dyn DeliveryObserver>,
    /// Deliveries at their channels (claimed or handed over), at most
    /// `batch`.
    slots: Arc<Semaphore>,
    /// Results waiting to be recorded, at most [`RECORDINGS_PER_SLOT`] ×
    /// `batch`: a delivery gives its slot back once its channels are done
    /// with it, since a write waiting for the store's commit is not at a
    /// gateway (whose rate caps are what `batch` is sized by), and holding
    /// the slot through the commit made the commit's latency cap the
    /// node's deliveries per second.
    recordings: Arc<Semaphore>,
    /// Reservations and handed messages not yet started, at most `batch`.
    /// Apart from `slots`, so that sends being made (each holding a ticket
    /// while it commits) never keep claimed messages from a slot.
    tickets: Arc<Semaphore>,
    handoff: mpsc::UnboundedSender<Handoff>,
    /// Taken by [`Delivery::run`]. Unbounded, since every message in it
    /// holds one of `tickets`.
    handoffs: Mutex<Option<mpsc::UnboundedReceiver<Handoff>>>,
    /// Whether `run` is taking handoffs: no reservation otherwise.
    running: AtomicBool,
    /// Messages may be queued unclaimed: a send queued one without handing
    /// it over, or the last claim came back full (or found no slot free).
    /// While it holds, every delivery that finishes looks again; a claim
    /// that comes back short clears it.
    backlog: AtomicBool,
}

/// A place with this node's worker, held for one send while it commits:
/// the send stores its message leased to the worker
/// ([`Reservation::lease`]) and hands it over ([`Reservation::hand`]).
/// Dropped unused (a refused send), the place is free again.
pub struct Reservation {
    ticket: OwnedSemaphorePermit,
    handoff: mpsc::UnboundedSender<Handoff>,
    lease: OutboxLease,
}

impl Reservation {
    /// The lease to store the message under.
    pub fn lease(&self) -> OutboxLease {
        self.lease.clone()
    }

    /// Gives the worker the message the store wrote under this lease. If
    /// the worker has stopped meanwhile the message stays leased in the
    /// store and is claimed again when the lease runs out.
    pub fn hand(self, msg: OutboxMessage) {
        let _ = self.handoff.send((msg, self.ticket));
    }
}

impl Delivery {
    pub fn new(
        store: Arc<dyn OutboxStore>,
        clock: Arc<dyn Clock>,
        router: Arc<dyn Router>,
        config: DeliveryConfig,
    ) -> Arc<Self> {
        Self::observed(store, clock, router, config, Arc::new(NoObserver))
    }

    /// As [`Delivery::new`], telling `observer` of every attempt.
    pub fn observed(
        store: Arc<dyn OutboxStore>,
        clock: Arc<dyn Clock>,
        router: Arc<dyn Router>,
        config: DeliveryConfig,
        observer: Arc<dyn DeliveryObserver>,
    ) -> Arc<Self> {
        let (handoff, handoffs) = mpsc::unbounded_channel();
        Arc::new(Self {
            store,
            clock,
            router,
            slots: Arc::new(Semaphore::new(config.batch as usize)),
            recordings: Arc::new(Semaphore::new(recordings(config.batch))),
            tickets: Arc::new(Semaphore::new(config.batch as usize)),
            config,
            wake: Notify::new(),
            observer,
            handoff,
            handoffs: Mutex::new(Some(handoffs)),
            running: AtomicBool::new(false),
            backlog: AtomicBool::new(false),
        })
    }

    /// Wakes the worker: a send just committed a message it did not hand
    /// over.
    pub fn notify(&self) {
        self.backlog.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// A place for a send about to be made at `now`, if the worker is
    /// running and has one free (at most `batch` at once); `None` sends
    /// the usual way (queued, then [`Delivery::notify`]).
    pub fn reserve(&self, now: i64) -> Option<Reservation> {
        if !self.running.load(Ordering::Acquire) {
            return None;
        }
        let ticket = self.tickets.clone().try_acquire_owned().ok()?;
        Some(Reservation {
            ticket,
            handoff: self.handoff.clone(),
            lease: OutboxLease {
                worker: self.config.worker_id.clone(),
                until: now.saturating_add(self.config.lease_ms),
            },
        })
    }

    /// Each channel's state (bound, last error), for `/readyz`.
    pub fn health(&self) -> Vec<ChannelHealth> {
        self.router.channels().iter().map(|c| c.health()).collect()
    }

    /// Messages waiting, in flight and failed, for `/readyz` and metrics.
    ///
    /// # Errors
    /// The store's error.
    pub async fn queue_depth(&self) -> Result<OutboxDepth, otpgate_store::StoreError> {
        self.store.outbox_depth().await
    }

    /// The router, so the server can ask [`Router::accepts`].
    pub fn router(&self) -> &Arc<dyn Router> {
        &self.router
    }

    /// Runs until `shutdown` fires, then lets the deliveries in hand finish
    /// and record their results (so no message is left half-recorded) and
    /// closes the channels.
    ///
    /// Up to `batch` messages are at their channels at once, each in its
    /// own task (and up to [`RECORDINGS_PER_SLOT`] × `batch` results wait
    /// for the store):
    /// a slow gateway holds only its own messages, and a slot freed by one
    /// delivery is refilled at once rather than at the end of a round.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        info!(worker = %self.config.worker_id, "delivery worker started");
        let capacity = self.config.batch as usize;
        let mut handoffs = self.handoffs.lock().ok().and_then(|mut h| h.take());
        self.running.store(handoffs.is_some(), Ordering::Release);
        // A timer that keeps its pace while handoffs arrive (a fresh sleep
        // per round would never fire under a steady stream of them).
        let mut poll = tokio::time::interval(Duration::from_millis(self.config.poll_ms.max(1)));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut look = true;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if look {
                look = false;
                self.claim().await;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some((msg, ticket)) = next_handoff(&mut handoffs) => {
                    self.start_when_free(msg, Some(ticket));
                }
                () = self.wake.notified() => look = true,
                _ = poll.tick() => look = true,
            }
        }
        self.running.store(false, Ordering::Release);
        // Messages handed over but not started are in hand too.
        if let Some(rx) = handoffs.as_mut() {
            rx.close();
            while let Ok((msg, ticket)) = rx.try_recv() {
                self.start_when_free(msg, Some(ticket));
            }
        }
        // Wait (bounded) for the deliveries in hand to record their results:
        // every slot back (each delivery past its channels holds a
        // recording place by then), then every recording place.
        let slots = u32::try_from(capacity).unwrap_or(u32::MAX);
        let places = u32::try_from(recordings(self.config.batch)).unwrap_or(u32::MAX);
        let in_hand = async {
            let _slots = self.slots.acquire_many(slots).await;
            let _places = self.recordings.acquire_many(places).await;
        };
        if tokio::time::timeout(Duration::from_secs(30), in_hand)
            .await
            .is_err()
        {
            warn!(
                "deliveries still in flight at shutdown; their leases will expire and another worker retries them"
            );
        }
        for c in self.router.channels() {
            c.close().await;
        }
        info!("delivery worker stopped");
    }

    /// Claims as many due messages as there are free slots and starts them.
    async fn claim(self: &Arc<Self>) {
        let free = self.slots.available_permits();
        if free == 0 {
            // The next delivery to finish looks again.
            self.backlog.store(true, Ordering::Release);
            return;
        }
        let now = self.clock.now_ms();
        let claimed = self
            .store
            .outbox_claim(
                &self.config.worker_id,
                u32::try_from(free).unwrap_or(u32::MAX),
                self.config.lease_ms,
                now,
            )
            .await;
        match claimed {
            Ok(batch) => {
                // Short: nothing more was due when the claim ran (a send
                // queued since has set it again, and woken the loop).
                self.backlog.store(batch.len() >= free, Ordering::Release);
                // A handed-over message may have taken a slot meanwhile:
                // one claimed without a slot waits for the next.
                for msg in batch {
                    self.start_when_free(msg, None);
                }
            }
            Err(e) => warn!(error = %e, "claiming from the outbox failed"),
        }
    }

    /// Delivers `msg` in a task of its own, holding `slot` while its
    /// channels have it, then one of `recordings` until its result is
    /// recorded.
    fn start(self: &Arc<Self>, msg: OutboxMessage, slot: OwnedSemaphorePermit) {
        let me = self.clone();
        tokio::spawn(async move {
            let outcome = me.attempt(&msg).await;
            // The gateway is done with it: the slot goes to the next message
            // while this result waits for the store's commit (for the inbox
            // channel, the commit is the whole delivery).
            let recording = me.recordings.clone().acquire_owned().await.ok();
            drop(slot);
            // A slot is free again: look for more work if some may wait.
            if me.backlog.load(Ordering::Acquire) {
                me.wake.notify_one();
            }
            me.write(msg.id, outcome).await;
            drop(recording);
        });
    }

    /// Delivers `msg` in a free slot, or in the next one to free up; a
    /// handed-over message's `ticket` is given back once it has its slot.
    fn start_when_free(self: &Arc<Self>, msg: OutboxMessage, ticket: Option<OwnedSemaphorePermit>) {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            drop(ticket);
            self.start(msg, slot);
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Ok(slot) = me.slots.clone().acquire_owned().await {
                drop(ticket);
                me.start(msg, slot);
            }
        });
    }

    /// One claim-and-deliver round; returns how many messages it handled.
    ///
    /// # Errors
    /// The store's error when claiming fails.
    pub async fn round(&self) -> Result<usize, otpgate_store::StoreError> {
        let now = self.clock.now_ms();
        let batch = self
            .store
            .outbox_claim(
                &self.config.worker_id,
                self.config.batch,
                self.config.lease_ms,
                now,
            )
            .await?;
        let n = batch.len();
        let jobs = batch.into_iter().map(|m| self.deliver(m));
        futures::future::join_all(jobs).await;
        Ok(n)
    }

    /// Delivers `msg` and records the result (a claim round's deliveries).
    async fn deliver(&self, msg: OutboxMessage) {
        let outcome = self.attempt(&msg).await;
        self.write(msg.id, outcome).await;
    }

    /// Tries the channels of `msg`'s route, in order, and says what to
    /// record; nothing is written here (see [`Delivery::write`]).
    async fn attempt(&self, msg: &OutboxMessage) -> Outcome {
        let now = self.clock.now_ms();
        let Some(text) = msg.text.clone() else {
            // Text already erased: nothing left to send.
            return Outcome::Failed {
                error: "no text".into(),
                now,
            };
        };
        if now >= msg.expires_at {
            self.observer.attempt("", "failed");
            return Outcome::Failed {
                error: "validity ran out before delivery".into(),
                now,
            };
        }
        let out = Outgoing {
            message_id: msg.id,
            verification_id: msg.verification_id,
            customer_id: msg.customer_id.clone(),
            destination: msg.destination.clone(),
            flow_type: msg.flow_type.clone(),
            step: msg.step,
            address: msg.address.clone(),
            lang: msg.lang.clone(),
            text,
        };
        let channels = self.router.route(msg);
        if channels.is_empty() {
            // Routes are fixed for the life of the process: waiting would
            // not make one match.
            warn!(message = msg.id, flow = %msg.flow_type, "no route for this message");
            self.observer.attempt("", "failed");
            return Outcome::Failed {
                error: "no route for this destination and flow".into(),
                now: self.clock.now_ms(),
            };
        }
        let mut last = String::new();
        let mut last_channel = "";
        let mut permanent = false;
        // Failover: an unavailable or transiently failing channel passes the
        // message to the next one at once; a permanent refusal ends it.
        for channel in &channels {
            last_channel = channel.name();
            // A channel that delivers by storing (the development inbox)
            // has its entry stored with the sent mark, in one write.
            let (result, entry) = match channel.stored_delivery(&out) {
                Some((entry, acc)) => (Ok(acc), Some(entry)),
                None => (channel.send(&out).await, None),
            };
            match result {
                Ok(acc) => {
                    // One line per attempt, with its flow and channel: what
                    // an operator follows a fallback workflow by.
                    info!(
                        verification = msg.verification_id.get(),
                        step = msg.step,
                        flow = %msg.flow_type,
                        channel = channel.name(),
                        "message handed to gateway"
                    );
                    let now = self.clock.now_ms();
                    self.observer.attempt(channel.name(), "sent");
                    self.observer
                        .gateway_accepted(channel.name(), now.saturating_sub(msg.created_at));
                    return Outcome::Sent {
                        info: SentInfo {
                            channel: channel.name().to_owned(),
                            gateway_id: acc.gateway_id,
                        },
                        entry,
                        now,
                    };
                }
                Err(ChannelError::Unavailable(e)) => {
                    debug!(message = msg.id, channel = channel.name(), error = %e, "channel unavailable");
                    last = format!("{}: unavailable: {e}", channel.name());
                }
                Err(ChannelError::Transient(e)) => {
                    debug!(message = msg.id, channel = channel.name(), error = %e, "transient failure");
                    last = format!("{}: {e}", channel.name());
                }
                Err(ChannelError::Permanent(e)) => {
                    last = format!("{}: {e}", channel.name());
                    permanent = true;
                    break;
                }
            }
        }
        let now = self.clock.now_ms();
        if permanent {
            warn!(message = msg.id, error = %last, "permanent delivery failure");
            self.observer.attempt(last_channel, "failed");
            return Outcome::Failed { error: last, now };
        }
        let delay = self.backoff(msg.attempts);
        if now + delay >= msg.expires_at {
            self.observer.attempt(last_channel, "failed");
            Outcome::Failed {
                error: format!("gave up: {last}"),
                now,
            }
        } else {
            debug!(message = msg.id, delay, error = %last, "will retry");
            self.observer.attempt(last_channel, "retry");
            Outcome::Retry {
                at: now + delay,
                error: last,
                now,
            }
        }
    }

    /// Records `outcome` for message `id`, if this worker still holds it.
    async fn write(&self, id: i64, outcome: Outcome) {
        let worker = &self.config.worker_id;
        let store = &self.store;
        self.record(match &outcome {
            Outcome::Sent {
                info,
                entry: Some(entry),
                now,
            } => {
                store
                    .outbox_sent_to_inbox(id, worker, info, entry, *now)
                    .await
            }
            Outcome::Sent {
                info,
                entry: None,
                now,
            } => store.outbox_sent(id, worker, info, *now).await,
            Outcome::Retry { at, error, now } => {
                store.outbox_retry(id, worker, *at, error, *now).await
            }
            Outcome::Failed { error, now } => store.outbox_failed(id, worker, error, *now).await,
        });
    }

    /// Exponential backoff with full jitter in its upper half (at most 20
    /// doublings, the cap reached long before).
    fn backoff(&self, attempts: u32) -> i64 {
        crate::leased::backoff_ms(
            self.config.retry_base_ms,
            self.config.retry_max_ms,
            attempts,
            20,
        )
    }

    fn record(&self, r: Result<bool, otpgate_store::StoreError>) {
        match r {
            Ok(true) => {}
            Ok(false) => debug!("lease was lost before the result was recorded"),
            Err(e) => warn!(error = %e, "could not record a delivery result"),
        }
    }
}

/// The next message handed over, or never when there is no receiver.
async fn next_handoff(rx: &mut Option<mpsc::UnboundedReceiver<Handoff>>) -> Option<Handoff> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
