//! How a node hears that another node (or the CLI) changed an account:
//! every account change is followed by a `NOTIFY` on one channel, and each
//! node that keeps accounts in memory `LISTEN`s on it, on a connection of
//! its own. The count of what was heard is
//! [`crate::AccountStore::account_changes`].
//!
//! Why a notification rather than a read per request: a read per request is
//! what the server's account cache exists to save. PostgreSQL delivers a
//! notification when the transaction that sent it commits, to every
//! listening session, in commit order, within about a round trip.
//!
//! What is not heard is not trusted: until the listener is connected, and
//! whenever its connection is lost (notifications sent meanwhile are gone),
//! every call answers a new number, so nothing read before is used again.
//! The listener starts on the first call (a CLI that never asks opens no
//! connection for it) and stops once the store is dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

/// The channel every node notifies and listens on.
pub(super) const CHANNEL: &str = "otpgate_accounts";

/// How long the listener waits before connecting again after a failure.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// What the store and its listener share.
#[derive(Debug)]
pub(super) struct AccountChanges {
    count: AtomicU64,
    /// The listener is connected and listening: what it has not heard has
    /// not happened (up to the notification's way over the network).
    listening: AtomicBool,
    /// The listener's own pool of one connection, taken by the first call.
    pool: Mutex<Option<PgPool>>,
    /// Told when the store is dropped, so the listener ends.
    stop: Arc<Notify>,
}

impl Drop for AccountChanges {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

impl AccountChanges {
    pub(super) fn new(pool: PgPool) -> Self {
        Self {
            count: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            pool: Mutex::new(Some(pool)),
            stop: Arc::new(Notify::new()),
        }
    }

    /// The count now: see the module's text. Starts the listener on the
    /// first call made inside a tokio runtime.
    pub(super) fn current(self: &Arc<Self>) -> u64 {
        if self.listening.load(Ordering::Acquire) {
            return self.count.load(Ordering::Acquire);
        }
        self.start();
        self.count.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Counts a change made through this store, and tells the other nodes.
    /// A notification that cannot be sent is logged: the other nodes then
    /// see the change once their cached reads expire.
    pub(super) async fn changed(&self, pool: &PgPool) {
        self.count.fetch_add(1, Ordering::AcqRel);
        let sent = sqlx::query("select pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(pool)
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "could not tell the other nodes of an account change");
        }
    }

    fn start(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(pool) = self.pool.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let (shared, stop) = (Arc::downgrade(self), Arc::clone(&self.stop));
        runtime.spawn(async move {
            // Dropping the listener's future on stop closes its connection.
            tokio::select! {
                () = listen(&shared, &pool) => {}
                () = stop.notified() => {}
            }
            pool.close().await;
        });
    }
}

/// Listens for as long as the store lives, connecting again after a
/// failure.
async fn listen(shared: &Weak<AccountChanges>, pool: &PgPool) {
    loop {
        let lost = listen_once(shared, pool).await;
        let Some(s) = shared.upgrade() else {
            return;
        };
        s.listening.store(false, Ordering::Release);
        s.count.fetch_add(1, Ordering::AcqRel);
        drop(s);
        tracing::warn!(error = %lost, "the account-change listener is not connected; it tries again");
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}

/// One connection's life, until it fails (the reason returned).
async fn listen_once(shared: &Weak<AccountChanges>, pool: &PgPool) -> String {
    let mut listener = match PgListener::connect_with(pool).await {
        Ok(l) => l,
        Err(e) => return e.to_string(),
    };
    // A lost connection is reported (`None` below) and handled here, not
    // reconnected behind this loop's back.
    listener.eager_reconnect(false);
    if let Err(e) = listener.listen(CHANNEL).await {
        return e.to_string();
    }
    if let Some(s) = shared.upgrade() {
        // Whatever happened before this moment was not heard.
        s.count.fetch_add(1, Ordering::AcqRel);
        s.listening.store(true, Ordering::Release);
    }
    loop {
        let heard = listener.try_recv().await;
        let Some(s) = shared.upgrade() else {
            return "the store is closed".into();
        };
        match heard {
            Ok(Some(_)) => {
                s.count.fetch_add(1, Ordering::AcqRel);
            }
            Ok(None) => return "the connection was lost".into(),
            Err(e) => return e.to_string(),
        }
    }
}
