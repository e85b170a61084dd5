//! Groups one node's concurrent sends of one account into one transaction:
//! one hold of the account's row lock and one COMMIT (one WAL flush) for
//! many sends, instead of one each.
//!
//! Why: a send locks its account's row until it commits, so the sends of
//! one account run one after another on every node, each holding the lock
//! through its round trips and its COMMIT's flush. Under a burst on one
//! account that made PostgreSQL sends about a tenth of SQLite's, whatever
//! the pool size. Here each node queues its sends by account; a queue's
//! task takes the sends of the account at its head that are waiting (up to
//! [`MAX_BATCH`]) into one transaction and commits once. Inside it the
//! checks of all of them are one statement and the writes of the accepted
//! ones one more, each send decided in turn with what those before it took
//! (`PostgresStore::create_group` in [`super::send`]).
//!
//! What each caller is promised is what it was promised alone:
//! - the sends of a transaction are decided in the order they were queued,
//!   and each weighs those before it, as if committed one by one (a send
//!   whose facts the group's read cannot give, and those after it, run
//!   one by one and read them);
//! - a refused send writes nothing (a send's checks write nothing, except a
//!   block the send triggers, which is kept as when alone);
//! - no caller hears back before the COMMIT has returned;
//! - if any statement fails before the COMMIT, the transaction is rolled
//!   back and every send of it is run again alone, so one bad send never
//!   fails the others; if the COMMIT itself fails, its outcome is unknown
//!   and every caller gets the error (running them again could charge
//!   twice);
//! - a caller who stopped waiting before its send began has nothing
//!   written.
//!
//! The account's row is read once, when it is locked; each send of the
//! group then weighs the balance as the sends before it left it (see
//! `send::Held`).
//!
//! Locks, so that grouping adds no deadlock: alone, a send takes its
//! account's row and then at most one prefix's advisory lock. A group takes
//! its one account's row first, then every prefix lock its sends will take,
//! in ascending order of the lock's key, before any send runs; so every
//! transaction takes one account and then prefixes in one global order, and
//! no two can wait on each other in a circle.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use sqlx::postgres::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::PostgresStore;
use super::error::db_err;
use super::send::{self, BEGIN, Held};
use crate::shared::fan_out;
use crate::{CreateOutcome, NewVerification, OutboxLease, OutboxMessage, StoreError, StoreResult};

/// A send's outcome, and its first message if it was stored leased (see
/// `VerificationStore::verification_create_leased`).
pub(super) type Sent = (CreateOutcome, Option<OutboxMessage>);

/// Sends one transaction takes at most.
const MAX_BATCH: usize = 64;

/// Sends a queue holds before callers wait to enqueue.
const QUEUE: usize = 256;

/// A send waiting for its queue's task, and where its answer goes.
struct Queued {
    req: NewVerification,
    lease: Option<OutboxLease>,
    reply: oneshot::Sender<StoreResult<Sent>>,
}

/// The node's send queues. Sends of one account always go to one queue, so
/// they keep their order; the queues run side by side, each on one pooled
/// connection at a time.
#[derive(Clone)]
pub(super) struct Batcher {
    queues: Arc<[mpsc::Sender<Queued>]>,
}

impl Batcher {
    /// Starts `queues` queue tasks on the current runtime; they end when the
    /// last clone is dropped.
    pub(super) fn start(pool: &PgPool, queues: usize) -> Self {
        let queues = (0..queues.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(drain(pool.clone(), rx));
                tx
            })
            .collect();
        Self { queues }
    }

    /// Runs `req` in its account's next transaction (its first message
    /// leased per `lease`); its outcome once that has committed.
    pub(super) async fn create(
        &self,
        req: NewVerification,
        lease: Option<OutboxLease>,
    ) -> StoreResult<Sent> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        req.customer_id.hash(&mut h);
        let n = usize::try_from(h.finish() % self.queues.len() as u64).unwrap_or(0);
        let (reply, answer) = oneshot::channel();
        self.queues[n]
            .send(Queued { req, lease, reply })
            .await
            .map_err(|_| closed())?;
        answer.await.unwrap_or_else(|_| Err(closed()))
    }

    /// Sends waiting in the queues (not those being run).
    pub(super) fn queued(&self) -> usize {
        self.queues
            .iter()
            .map(|q| q.max_capacity() - q.capacity())
            .sum()
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the PostgreSQL store is closed".into())
}

/// One queue's task: the sends of the account at the head, then the next.
async fn drain(pool: PgPool, mut queue: mpsc::Receiver<Queued>) {
    let mut waiting: VecDeque<Queued> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match queue.recv().await {
                Some(q) => waiting.push_back(q),
                None => return,
            }
        }
        while waiting.len() < QUEUE {
            match queue.try_recv() {
                Ok(q) => waiting.push_back(q),
                Err(_) => break,
            }
        }
        // A caller that stopped waiting (its request timed out) before its
        // send began has nothing written.
        waiting.retain(|q| !q.reply.is_closed());
        let Some(head) = waiting.front() else {
            continue;
        };
        let customer = head.req.customer_id.clone();
        let mut batch = Vec::new();
        let mut rest = VecDeque::with_capacity(waiting.len());
        for q in waiting.drain(..) {
            if batch.len() < MAX_BATCH && q.req.customer_id == customer {
                batch.push(q);
            } else {
                rest.push_back(q);
            }
        }
        waiting = rest;
        run(&pool, batch).await;
    }
}

/// Runs `batch` (sends of one account) together, or alone if it is one.
async fn run(pool: &PgPool, batch: Vec<Queued>) {
    if batch.len() > 1 {
        match together(pool, &batch).await {
            Ok(Ok(outcomes)) => {
                for (q, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = q.reply.send(Ok(outcome));
                }
                return;
            }
            Ok(Err(commit_failed)) => {
                for q in batch {
                    let _ = q.reply.send(Err(fan_out(&commit_failed)));
                }
                return;
            }
            // Rolled back: each runs alone below.
            Err(_) => {}
        }
    }
    for q in batch {
        if !q.reply.is_closed() {
            let outcome = send::create(pool, &q.req, q.lease.as_ref()).await;
            let _ = q.reply.send(outcome);
        }
    }
}

/// One transaction for `batch`. `Err`: it failed before its COMMIT and was
/// rolled back (nothing of it is written); `Ok(Err)`: the COMMIT failed.
async fn together(pool: &PgPool, batch: &[Queued]) -> StoreResult<StoreResult<Vec<Sent>>> {
    let mut tx = pool.begin_with(BEGIN).await.map_err(db_err)?;
    match sends(&mut tx, batch).await {
        Ok(outcomes) => Ok(tx.commit().await.map_err(db_err).map(|()| outcomes)),
        Err(e) => {
            // Rolled back here and now, so the sends run alone next do not
            // wait for this transaction's locks.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

async fn sends(tx: &mut sqlx::PgConnection, batch: &[Queued]) -> StoreResult<Vec<Sent>> {
    let Some(first) = batch.first() else {
        return Ok(Vec::new());
    };
    // The locks in their global order (see the module's doc): the account,
    // then every prefix lock a send here will take, by the lock's key.
    let prefixes: Vec<&str> = batch
        .iter()
        .filter(|q| send::takes_prefix_lock(&q.req))
        .map(|q| q.req.prefix.as_str())
        .collect();
    let mut held = Held {
        account: send::lock(tx, first.req.customer_id.as_str(), &prefixes).await?,
    };
    let group: Vec<send::GroupSend<'_>> = batch
        .iter()
        .map(|q| send::GroupSend {
            req: &q.req,
            lease: q.lease.as_ref(),
        })
        .collect();
    let outcomes = PostgresStore::create_group(tx, &group, &mut held)
        .await?
        .into_iter()
        .map(|outcome| match outcome {
            Ok((v, handed)) => (CreateOutcome::Created(v), handed),
            Err(refused) => (refused, None),
        })
        .collect();
    Ok(outcomes)
}
