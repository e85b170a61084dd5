//! The accounts that passed a token check lately, kept in memory, so the
//! token check of every send and validation does not read the account
//! again while nothing about accounts has changed.
//!
//! Why: on SQLite each such read is a read transaction on a file that the
//! writer changed a moment before, so the reader's page cache starts empty
//! and the account's pages come back through system calls, and its
//! settings' JSON is parsed again; a full flow (token, send, validate) read
//! the account three times. On PostgreSQL it is a round trip each.
//!
//! When an entry is used again: only while the store's
//! [`otpgate_store::AccountStore::account_changes`] still has the value it
//! had before the entry was read, and for at most `auth.account_cache_ms`
//! (1 s by default; 0 turns the cache off). So:
//! - a change through this server (the console's password, credits,
//!   disabled flag, settings; the API's token revocation) is seen by the
//!   next request;
//! - on PostgreSQL, a change by another node or the CLI is seen as soon as
//!   its notification arrives (a round trip after its COMMIT); while the
//!   node is not listening, nothing is reused;
//! - on SQLite, a change by another process (the CLI beside a running
//!   server) is seen at the server's next write, and on an idle server
//!   within the lifetime.
//!
//! Balances are never decided from here: the store charges in the send's
//! own transaction, against the row itself. Only accounts that exist are
//! kept, at most [`MAX_ENTRIES`], so requests for made-up customerIds
//! cannot grow it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use otpgate_core::CustomerId;
use otpgate_store::prelude::*;
use otpgate_store::{Account, StoreResult};

/// Accounts kept at most; past it the cache starts over (an account read
/// again costs one read).
pub const MAX_ENTRIES: usize = 10_000;

/// See the module's text.
#[derive(Debug)]
pub struct AccountCache {
    ttl: Duration,
    entries: Mutex<HashMap<CustomerId, Entry>>,
}

#[derive(Debug)]
struct Entry {
    /// When the read began: an entry never outlives the lifetime counted
    /// from before the row was seen.
    read_at: Instant,
    /// The store's account changes before the read.
    changes: u64,
    account: Account,
}

impl AccountCache {
    /// Entries live at most `ttl_ms`; 0 keeps none.
    pub fn new(ttl_ms: u64) -> Self {
        Self {
            ttl: Duration::from_millis(ttl_ms),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The account `id`: from memory if read under the store's current
    /// account changes less than the lifetime ago, else from `store` (and
    /// then kept).
    ///
    /// # Errors
    /// The store's, when it had to be asked.
    pub async fn get(&self, store: &dyn Store, id: &CustomerId) -> StoreResult<Option<Account>> {
        if self.ttl.is_zero() {
            return store.account_get(id).await;
        }
        // Taken before the read: a change that lands while it runs moves
        // the count on, and the entry is not used.
        let changes = store.account_changes();
        if let Some(account) = self.fresh(id, changes) {
            return Ok(Some(account));
        }
        let read_at = Instant::now();
        let account = store.account_get(id).await?;
        if let Some(a) = &account {
            let mut entries = self.lock();
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(
                id.clone(),
                Entry {
                    read_at,
                    changes,
                    account: a.clone(),
                },
            );
        }
        Ok(account)
    }

    fn fresh(&self, id: &CustomerId, changes: u64) -> Option<Account> {
        let entries = self.lock();
        let e = entries.get(id)?;
        (e.changes == changes && e.read_at.elapsed() < self.ttl).then(|| e.account.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CustomerId, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use otpgate_store::sqlite::SqliteStore;
    use otpgate_store::{AccountSettings, NewAccount, Observed, Observer};

    use super::*;

    async fn store_with_account() -> (SqliteStore, CustomerId) {
        let store = SqliteStore::in_memory().await.unwrap();
        let id = CustomerId::parse("C-0123456789ABCDE").unwrap();
        store
            .account_create(NewAccount {
                customer_id: id.clone(),
                password_hash: "not checked here".into(),
                email: None,
                country: None,
                credits: 100,
                test_credits: 0,
                settings: AccountSettings::default(),
                created_at: 0,
            })
            .await
            .unwrap();
        (store, id)
    }

    #[tokio::test]
    async fn a_change_through_the_store_is_seen_by_the_next_check() {
        let (store, id) = store_with_account().await;
        let cache = AccountCache::new(60_000);
        let before = cache.get(&store, &id).await.unwrap().unwrap();
        assert!(!before.disabled);
        store.account_set_disabled(&id, true).await.unwrap();
        let after = cache.get(&store, &id).await.unwrap().unwrap();
        assert!(
            after.disabled,
            "the cache served the account from before the change"
        );
        store.account_revoke_tokens(&id).await.unwrap();
        let epoch = cache.get(&store, &id).await.unwrap().unwrap().token_epoch;
        assert_eq!(epoch, before.token_epoch + 1);
    }

    /// Counts the account reads that reach the store.
    #[derive(Default, Clone)]
    struct Reads(Arc<AtomicUsize>);

    impl Observer for Reads {
        fn operation(&self, op: &'static str, _: Duration, _: bool) {
            if op == "account_get" {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    #[tokio::test]
    async fn an_unchanged_account_is_read_once_within_the_lifetime() {
        let (store, id) = store_with_account().await;
        let reads = Reads::default();
        let store = Observed::new(Arc::new(store), reads.clone());
        let count = || reads.0.load(Ordering::Relaxed);
        let cache = AccountCache::new(60_000);
        let first = cache.get(&store, &id).await.unwrap().unwrap();
        assert_eq!(cache.get(&store, &id).await.unwrap().unwrap(), first);
        assert_eq!(count(), 1, "the second check read the account again");
        // A change: read again, once.
        store.account_add_credits(&id, 5).await.unwrap();
        assert_eq!(cache.get(&store, &id).await.unwrap().unwrap().credits, 105);
        cache.get(&store, &id).await.unwrap();
        assert_eq!(count(), 2);
        // Past the lifetime: read again, with no change.
        let short = AccountCache::new(1);
        short.get(&store, &id).await.unwrap();
        std::thread::sleep(Duration::from_millis(5));
        short.get(&store, &id).await.unwrap();
        assert_eq!(count(), 4);
        // Off: every check reads.
        let off = AccountCache::new(0);
        off.get(&store, &id).await.unwrap();
        off.get(&store, &id).await.unwrap();
        assert_eq!(count(), 6);
    }

    #[tokio::test]
    async fn unknown_accounts_are_not_kept() {
        let (store, _) = store_with_account().await;
        let cache = AccountCache::new(60_000);
        let nobody = CustomerId::parse("C-FFFFFFFFFFFFFFF").unwrap();
        assert!(cache.get(&store, &nobody).await.unwrap().is_none());
        assert!(cache.lock().is_empty());
    }
}
