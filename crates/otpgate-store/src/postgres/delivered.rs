//! Records messages sent (`outbox_sent`, `outbox_sent_to_inbox`) in one
//! statement for many: one node's concurrent results wait in one queue, and
//! its task records all those waiting (up to [`MAX_BATCH`]) at once.
//!
//! Why: each delivery was a statement and a commit of its own, one WAL
//! flush each, and the costliest statement of a flow on PostgreSQL (a third
//! of the database's execution time in the flows bench); the executor's
//! start-up, the round trip and the commit are now paid once per group.
//!
//! What each caller is promised is what it was promised alone: its message
//! is marked sent (with an earlier step still retrying cancelled, the
//! verification's delivery set, and for the inbox channel the inbox row
//! written) only if its worker still holds the lease, and it hears whether
//! that happened only once the statement has committed. Two results for
//! one verification in one group (two of its steps, or the same message
//! twice) are recorded one after another instead, each seeing the other,
//! as are all of a group's results if its statement fails: recording a
//! result again is harmless (a second time finds the lease gone and writes
//! nothing), so running them alone after a failed group can neither lose
//! nor double a result.
//!
//! Locks: as alone, verifications before outbox rows; a group locks its
//! verifications in ascending id, so two groups never wait on each other
//! in a circle (see `super::outbox` on the order a validation keeps).

use sqlx::Row;
use sqlx::postgres::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::error::db_err;
use crate::shared::id_i64;
use crate::{InboxEntry, SentInfo, StoreError, StoreResult};

/// Results one statement records at most.
const MAX_BATCH: usize = 64;

/// Results the queue holds before callers wait to enqueue.
const QUEUE: usize = 256;

/// One result to record: message `message_id`, sent by `worker` as `sent`
/// at `now`, and its inbox row if the inbox channel delivered it.
pub(super) struct Sent {
    pub(super) message_id: i64,
    pub(super) worker: String,
    pub(super) sent: SentInfo,
    pub(super) entry: Option<InboxEntry>,
    pub(super) now: i64,
}

struct Queued {
    sent: Sent,
    reply: oneshot::Sender<StoreResult<bool>>,
}

/// The node's queue of results to record.
#[derive(Clone)]
pub(super) struct Delivered {
    queue: mpsc::Sender<Queued>,
}

impl Delivered {
    /// Starts the queue's task on the current runtime; it ends when the
    /// last clone is dropped.
    pub(super) fn start(pool: &PgPool) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(drain(pool.clone(), rx));
        Self { queue }
    }

    /// Records `sent`; whether it applied (its worker still held the lease),
    /// once committed.
    pub(super) async fn record(&self, sent: Sent) -> StoreResult<bool> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Queued { sent, reply })
            .await
            .map_err(|_| closed())?;
        answer.await.unwrap_or_else(|_| Err(closed()))
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the PostgreSQL store is closed".into())
}

/// The queue's task: everything waiting, in one statement, then the next.
/// A result whose caller stopped waiting is still recorded: the message
/// was sent.
async fn drain(pool: PgPool, mut queue: mpsc::Receiver<Queued>) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(q) => group.push(q),
                Err(_) => break,
            }
        }
        let items: Vec<&Sent> = group.iter().map(|q| &q.sent).collect();
        let outcomes = match record(&pool, &items).await {
            Ok(outcomes) => outcomes,
            // A lone result has its own error; a group's are run alone.
            Err(e) if group.len() == 1 => vec![Outcome::Failed(e)],
            Err(_) => group.iter().map(|_| Outcome::Alone).collect(),
        };
        for (q, outcome) in group.into_iter().zip(outcomes) {
            let answer = match outcome {
                Outcome::Applied(applied) => Ok(applied),
                Outcome::Failed(e) => Err(e),
                Outcome::Alone => match record(&pool, &[&q.sent]).await {
                    Ok(mut one) => match one.pop() {
                        Some(Outcome::Applied(applied)) => Ok(applied),
                        Some(Outcome::Failed(e)) => Err(e),
                        _ => Err(StoreError::Internal(
                            "a result recorded alone was deferred".into(),
                        )),
                    },
                    Err(e) => Err(e),
                },
            };
            let _ = q.reply.send(answer);
        }
    }
}

/// What became of one result of a statement.
enum Outcome {
    /// Recorded; whether it applied.
    Applied(bool),
    /// Left for a statement of its own (see the module's doc).
    Alone,
    Failed(StoreError),
}

/// Records `items` in one statement ([`SENT`]): their outcomes, in order.
async fn record(pool: &PgPool, items: &[&Sent]) -> StoreResult<Vec<Outcome>> {
    fn col<'a, T>(items: &[&'a Sent], f: impl Fn(&'a Sent) -> T) -> Vec<T> {
        items.iter().map(|s| f(s)).collect()
    }
    let rows = sqlx::query(SENT)
        .bind(col(items, |s| s.message_id))
        .bind(col(items, |s| s.worker.as_str()))
        .bind(col(items, |s| s.sent.channel.as_str()))
        .bind(col(items, |s| s.sent.gateway_id.as_deref()))
        .bind(col(items, |s| s.now))
        .bind(col(items, |s| {
            s.entry
                .as_ref()
                .and_then(|e| e.customer_id.as_ref().map(|c| c.as_str()))
        }))
        .bind(col(items, |s| {
            s.entry.as_ref().map(|e| e.destination.as_str())
        }))
        .bind(col(items, |s| s.entry.as_ref().map(|e| e.text.as_str())))
        .bind(col(items, |s| {
            s.entry.as_ref().and_then(|e| e.verification_id.map(id_i64))
        }))
        .bind(col(items, |s| s.entry.as_ref().map(|e| e.created_at)))
        .bind(col(items, |s| s.entry.is_some()))
        .fetch_all(pool)
        .await
        .map_err(db_err)?;
    if rows.len() != items.len() {
        return Err(StoreError::Internal(format!(
            "recording {} results gave {} rows",
            items.len(),
            rows.len()
        )));
    }
    rows.iter()
        .map(|row| {
            let alone: bool = row.try_get("alone").map_err(db_err)?;
            let applied: bool = row.try_get("applied").map_err(db_err)?;
            Ok(if alone {
                Outcome::Alone
            } else {
                Outcome::Applied(applied)
            })
        })
        .collect()
}

/// Marks the messages `$1` sent, each if its worker (`$2`) still holds it:
/// the outbox row, an earlier step still retrying, the verification's
/// delivery, and (`$11`) the inbox row, together or not at all; the
/// parameters are arrays, one element per result. One row per result, in
/// order: `alone` if it shares its verification with another result here
/// (then nothing of it is written), else `applied`.
///
/// The earlier steps are found through a lateral lookup by the message's
/// verification, so the (verification_id, step) key serves it rather than
/// a scan of every queued row.
const SENT: &str = "with args as (
         select * from unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                              $6::text[], $7::text[], $8::text[], $9::bigint[], $10::bigint[],
                              $11::boolean[]) with ordinality
             as a (id, worker, channel, gateway_id, now, b_customer, b_destination, b_text,
                   b_verification, b_created, boxed, n)
     ),
     mine as materialized (
         select a.id, m.verification_id as vid,
                count(*) over (partition by m.verification_id) as results
           from args a join outbox m on m.id = a.id
     ),
     locked as (
         select v.id from verifications v
          where v.id in (select vid from mine where results = 1)
          order by v.id
            for update
     ),
     o as (
         update outbox m
            set status = 'sent', text = null, channel = a.channel, gateway_id = a.gateway_id,
                lease_owner = null, lease_until = null, updated_at = a.now
           from args a, locked l
          where m.id = a.id and m.verification_id = l.id
            and m.lease_owner = a.worker and m.status = 'queued'
          returning m.id, m.verification_id, m.step, a.now
     ),
     -- A later step went out: an earlier one still retrying is not needed
     -- any more.
     earlier as (
         update outbox x
            set status = 'cancelled', text = null, lease_owner = null, lease_until = null,
                updated_at = d.now
           from (select e.id, o.now from o cross join lateral (
                     select id from outbox e
                      where e.verification_id = o.verification_id and e.status = 'queued'
                        and e.step < o.step
                 ) e) d
          where x.id = d.id
     ),
     marked as (
         update verifications v
            set delivery = 'sent', channel = a.channel, gateway_id = a.gateway_id
           from o join args a on a.id = o.id
          where v.id = o.verification_id
          returning o.id as message_id
     ),
     boxed as (
         insert into inbox (customer_id, destination, text, verification_id, created_at)
         select a.b_customer, a.b_destination, a.b_text, a.b_verification, a.b_created
           from marked k join args a on a.id = k.message_id
          where a.boxed
     )
     select exists (select 1 from mine where mine.id = a.id and mine.results > 1) as alone,
            exists (select 1 from marked k where k.message_id = a.id) as applied
       from args a
      order by a.n";
