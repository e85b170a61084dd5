//! Passwords: hashing and checking them with Argon2id, off the async
//! runtime and at most a configured number at once ([`Hasher`]), and the
//! cache that lets a repeated right key skip Argon2 ([`KeyCache`]). The
//! throttles on failed attempts are in [`crate::limits`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use hmac::{Hmac, KeyInit, Mac};
use otpgate_core::CustomerId;
use otpgate_store::Account;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Hashes a password with Argon2id's default parameters on a blocking thread
/// (a hash takes tens of milliseconds of CPU).
///
/// # Errors
/// Only if the blocking pool is gone or hashing itself fails.
pub async fn hash_password(password: &str) -> anyhow::Result<String> {
    let pw = password.as_bytes().to_vec();
    let hash = tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(&pw)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("argon2 failed: {e}"))
    })
    .await??;
    Ok(hash)
}

/// Checks `password` against a stored PHC string on a blocking thread.
pub async fn verify_password(phc: &str, password: &[u8]) -> bool {
    let phc = phc.to_owned();
    let pw = password.to_vec();
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&phc)
            .map(|h| Argon2::default().verify_password(&pw, &h).is_ok())
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// The bound on password hashing. Each Argon2id hash takes about 19 MiB
/// and tens of milliseconds of CPU; without a bound, a burst of token
/// requests for unknown customerIds ran one per blocking thread (up to 512),
/// and every thread's allocator arena kept its 19 MiB afterwards: gigabytes.
///
/// Hashes run on a fixed set of `running` threads of their own (so at most
/// that many arenas ever hold Argon2 memory); at most `queued` more wait,
/// each at most `max_wait`, and anything beyond is answered at once that the
/// server is busy. Waiting costs no hashing memory.
pub struct Hasher {
    jobs: std::sync::mpsc::SyncSender<Job>,
    running: usize,
    max_wait: Duration,
    /// Hashing threads holding their Argon2 memory right now.
    holding: Arc<AtomicUsize>,
}

/// The hasher is full: answer 503 with `Retry-After: 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// One hash to run: when it was queued, and the work (which answers
/// through its own channel), given the thread's Argon2 memory, or nothing
/// when it waited too long.
struct Job {
    queued_at: std::time::Instant,
    work: Work,
}

/// A job's work: given the thread's memory, or `None` to give up.
type Work = Box<dyn FnOnce(Option<&mut [Block]>) + Send>;

/// How long a hashing thread keeps its Argon2 memory without a hash to run.
const IDLE: Duration = Duration::from_secs(2);

/// Argon2's working memory for the default parameters (19 MiB), allocated
/// by each hashing thread at its first hash and reused while it stays busy:
/// allocating it per hash let the allocator keep freed copies in several
/// arenas.
///
/// Reserved larger than glibc's largest mmap threshold (32 MiB on 64-bit),
/// so that the allocation is always a mapping of its own, which freeing
/// returns to the OS. At 19 MiB glibc serves it from an arena, and keeps it
/// there after the free, once an earlier free has raised its threshold past
/// 19 MiB. Only the blocks a hash uses are ever touched, so only they are
/// resident.
fn hash_memory() -> Vec<Block> {
    const RESERVE_BYTES: usize = 33 << 20;
    let blocks = Params::DEFAULT.block_count();
    let mut mem = Vec::with_capacity((RESERVE_BYTES / std::mem::size_of::<Block>()).max(blocks));
    mem.resize(blocks, Block::new());
    mem
}

/// Checks `password` against a PHC string in `mem` (or, for parameters
/// larger than the default, in memory of its own).
fn verify_in(mem: &mut [Block], phc: &str, password: &[u8]) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let (Ok(params), Ok(algorithm)) = (
        Params::try_from(&hash),
        Algorithm::new(hash.algorithm.as_str()),
    ) else {
        return false;
    };
    let Ok(version) = hash
        .version
        .map_or(Ok(Version::default()), Version::try_from)
    else {
        return false;
    };
    let need = params.block_count();
    let argon = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    let done = match mem.get_mut(..need) {
        Some(m) => argon.hash_password_into_with_memory(password, salt, &mut out, m),
        None => argon.hash_password_into(password, salt, &mut out),
    };
    wipe(mem);
    done.is_ok() && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
}

/// A new PHC string for `password` with the default parameters, hashed in
/// `mem`.
fn hash_in(mem: &mut [Block], password: &[u8]) -> anyhow::Result<String> {
    let params = Params::DEFAULT;
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let m = mem
        .get_mut(..params.block_count())
        .ok_or_else(|| anyhow::anyhow!("argon2 memory too small"))?;
    let done = Argon2::default().hash_password_into_with_memory(password, &salt, &mut out, m);
    wipe(mem);
    done.map_err(|e| anyhow::anyhow!("argon2 failed: {e}"))?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::default().into()),
        params: ParamsString::try_from(&params).map_err(|e| anyhow::anyhow!("{e}"))?,
        salt: Some(Salt::new(&salt).map_err(|e| anyhow::anyhow!("{e}"))?),
        hash: Some(Output::new(&out).map_err(|e| anyhow::anyhow!("{e}"))?),
    };
    Ok(phc.to_string())
}

/// What a hash leaves in its memory is derived from the password: cleared
/// before the next one.
fn wipe(mem: &mut [Block]) {
    mem.fill(Block::new());
}

impl Hasher {
    /// `running` threads (at least 1) and `queued` places to wait.
    ///
    /// # Panics
    /// If a thread cannot be started.
    pub fn new(running: usize, queued: usize, max_wait: Duration) -> Self {
        let running = running.max(1);
        // The channel's buffer is the queue; each thread holds one job
        // while it runs.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(queued);
        let rx = Arc::new(Mutex::new(rx));
        let holding = Arc::new(AtomicUsize::new(0));
        for i in 0..running {
            let rx = rx.clone();
            let held = holding.clone();
            std::thread::Builder::new()
                .name(format!("otpgate-hash-{i}"))
                .spawn(move || {
                    // Allocated at the first hash, kept while hashes keep
                    // coming, given back after `IDLE` without one (19 MiB
                    // is most of an idle server's memory).
                    let mut mem: Vec<Block> = Vec::new();
                    loop {
                        let job = {
                            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                            rx.recv_timeout(IDLE)
                        };
                        let job = match job {
                            Ok(job) => job,
                            Err(RecvTimeoutError::Timeout) => {
                                if !mem.is_empty() {
                                    mem = Vec::new();
                                    held.fetch_sub(1, Ordering::Relaxed);
                                }
                                continue;
                            }
                            // All senders gone: the server is gone.
                            Err(RecvTimeoutError::Disconnected) => return,
                        };
                        // Waited too long: the caller has been told it is
                        // busy, or is about to be; do not spend the hash.
                        let fresh = job.queued_at.elapsed() < max_wait;
                        if fresh && mem.is_empty() {
                            mem = hash_memory();
                            held.fetch_add(1, Ordering::Relaxed);
                        }
                        (job.work)(fresh.then_some(mem.as_mut_slice()));
                    }
                })
                .expect("start a password hashing thread");
        }
        Self {
            jobs: tx,
            running,
            max_wait,
            holding,
        }
    }

    /// Hashing threads holding Argon2 memory now (each gives it back after
    /// two seconds without a hash).
    pub fn holding_memory(&self) -> usize {
        self.holding.load(Ordering::Relaxed)
    }

    /// The default for `auth.max_concurrent_hashes`: one per core but one
    /// (at least one), so that a flood of password checks leaves a core to
    /// everything else the server does.
    pub fn default_running() -> usize {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get().saturating_sub(1))
            .max(1)
    }

    /// Hashes running at once at most.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Runs `f` on a hashing thread, with its memory.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut [Block]) -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            queued_at: std::time::Instant::now(),
            work: Box::new(move |mem| {
                if let Some(mem) = mem {
                    let _ = tx.send(f(mem));
                }
            }),
        };
        self.jobs.try_send(job).map_err(|_| Busy)?;
        match tokio::time::timeout(self.max_wait + Duration::from_secs(30), rx).await {
            Ok(Ok(v)) => Ok(v),
            // Dropped unrun (waited past `max_wait`), or a thread is gone.
            _ => Err(Busy),
        }
    }

    /// Checks `password` against a stored PHC string, within the bound.
    ///
    /// # Errors
    /// [`Busy`] when the queue is full or the wait for a thread too long.
    pub async fn verify(&self, phc: &str, password: &[u8]) -> Result<bool, Busy> {
        let phc = phc.to_owned();
        let pw = password.to_vec();
        self.run(move |mem| verify_in(mem, &phc, &pw)).await
    }

    /// Hashes a new password, within the bound.
    ///
    /// # Errors
    /// [`Busy`] as [`Hasher::verify`]; `Ok(Err(_))` when hashing fails.
    pub async fn hash(&self, password: &str) -> Result<anyhow::Result<String>, Busy> {
        let pw = password.as_bytes().to_vec();
        self.run(move |mem| hash_in(mem, &pw)).await
    }
}

/// Remembers, per account and token epoch, a keyed digest of the last key
/// that verified, so repeated token requests with the right key skip
/// Argon2. A password change bumps the epoch and so empties the entry; the
/// digest key is random per process and never stored.
pub struct KeyCache {
    digest_key: [u8; 32],
    entries: Mutex<HashMap<CustomerId, (i64, [u8; 32])>>,
}

impl KeyCache {
    pub fn new() -> Self {
        let mut digest_key = [0u8; 32];
        rand::fill(&mut digest_key);
        Self {
            digest_key,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn digest(&self, key: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.digest_key)
            .expect("HMAC accepts keys of any length");
        mac.update(key);
        mac.finalize().into_bytes().into()
    }

    pub fn hit(&self, account: &Account, key: &[u8]) -> bool {
        let d = self.digest(key);
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&account.customer_id)
            .is_some_and(|(epoch, stored)| {
                *epoch == account.token_epoch && bool::from(stored.ct_eq(&d))
            })
    }

    pub fn remember(&self, account: &Account, key: &[u8]) {
        let d = self.digest(key);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() > 100_000 {
            entries.clear();
        }
        entries.insert(account.customer_id.clone(), (account.token_epoch, d));
    }
}

impl Default for KeyCache {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_hasher_agrees_with_the_plain_functions() {
        let h = Hasher::new(1, 4, Duration::from_secs(5));
        let mine = h.hash("a password").await.unwrap().unwrap();
        let plain = hash_password("a password").await.unwrap();
        for phc in [&mine, &plain] {
            assert!(h.verify(phc, b"a password").await.unwrap());
            assert!(!h.verify(phc, b"another").await.unwrap());
            assert!(verify_password(phc, b"a password").await);
        }
        assert!(!h.verify("not a phc string", b"x").await.unwrap());
        // Stronger parameters than the default still verify (in memory of
        // their own).
        let strong = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(32 * 1024, 2, 1, None).unwrap(),
        )
        .hash_password(b"pw")
        .unwrap()
        .to_string();
        assert!(h.verify(&strong, b"pw").await.unwrap());
    }

    #[tokio::test]
    async fn an_idle_hashing_thread_gives_its_memory_back() {
        let h = Hasher::new(2, 4, Duration::from_secs(5));
        assert_eq!(h.holding_memory(), 0, "nothing is allocated before a hash");
        let phc = h.hash("a password").await.unwrap().unwrap();
        assert_eq!(h.holding_memory(), 1);
        // Busy, the memory is kept from one hash to the next.
        for _ in 0..3 {
            tokio::time::sleep(IDLE / 4).await;
            assert!(h.verify(&phc, b"a password").await.unwrap());
            assert!(h.holding_memory() >= 1);
        }
        let deadline = std::time::Instant::now() + IDLE * 3;
        while h.holding_memory() > 0 {
            assert!(std::time::Instant::now() < deadline, "still held");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // And taken again for the next hash.
        assert!(h.verify(&phc, b"a password").await.unwrap());
        assert_eq!(h.holding_memory(), 1);
    }

    #[tokio::test]
    async fn a_full_hasher_answers_busy_at_once() {
        let h = Arc::new(Hasher::new(1, 1, Duration::from_secs(5)));
        let phc = hash_password("pw").await.unwrap();
        let many: Vec<_> = (0..8)
            .map(|_| {
                let (h, phc) = (h.clone(), phc.clone());
                tokio::spawn(async move { h.verify(&phc, b"pw").await })
            })
            .collect();
        let mut busy = 0;
        for t in many {
            if t.await.unwrap().is_err() {
                busy += 1;
            }
        }
        assert!(
            busy >= 5,
            "one runs, one waits, the rest are refused: {busy}"
        );
    }
}
