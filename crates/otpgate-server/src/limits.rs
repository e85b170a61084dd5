//! Throttles on what a stranger can try without a credential: failed token
//! requests, console log-ins and password checks, and sign-ups.
//!
//! Two rules make them hold under concurrency and keep owners in:
//!
//! - **Reserve before the work.** [`Throttle::reserve`] counts an attempt
//!   before its password is checked, so sixty requests arriving together
//!   cannot all pass a check that only sees finished failures. The attempt
//!   is then [`Attempt::record`]ed (it failed, or for sign-ups it happened)
//!   or dropped (it succeeded), which frees its place.
//! - **Block strangers, not owners.** Failures count per (name, client) and
//!   per client with the configured limit; per name alone only with a larger
//!   limit, and not for a client that recently used the right credential for
//!   that name ([`KnownClients`]). So an attacker's wrong keys block the
//!   attacker's address, while the owner's right key from another address
//!   still works; and a distributed attack that does block a name for new
//!   addresses leaves the owner's usual address working.
//!
//! Keys are typed ([`Key`]) so that names and addresses of different kinds
//! can never collide, and every refusal rounds its wait the same way
//! ([`retry_after_secs`]). Counts are per node, in memory.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;

/// Beyond this many tracked keys, expired ones are swept (and if none
/// expired, the map is cleared), so a flood of distinct names cannot grow
/// memory without bound.
const MAX_KEYS: usize = 100_000;

/// A client address as throttles see it: an IPv4 address, or an IPv6
/// address cut to its /64 (one subscriber's allocation, which a single
/// attacker can draw fresh addresses from at will).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn new(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    Self(IpAddr::V6(bits.into()))
                }
            },
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// What a throttle counts by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// Failed token requests for a customerId, as given (upper-cased).
    Customer(String),
    /// Failed token requests for a customerId from one client.
    CustomerFrom(String, ClientKey),
    /// Failures of any kind from one client.
    Client(ClientKey),
    /// Failed console log-ins for a login name (lower-cased).
    Login(String),
    /// Failed console log-ins for a login name from one client.
    LoginFrom(String, ClientKey),
    /// Wrong current passwords on an account's password-change form.
    Password(String),
    /// Sign-ups from one client.
    Signup(ClientKey),
}

/// A refusal: over the limit, retry after this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_after: u64,
}

/// Seconds to wait for `wait_ms`, rounded up, at least 1: the one rounding
/// every throttle's `Retry-After` uses.
pub fn retry_after_secs(wait_ms: i64) -> u64 {
    u64::try_from((wait_ms + 999).div_euclid(1000))
        .unwrap_or(1)
        .max(1)
}

#[derive(Default)]
struct Window {
    /// When recorded attempts happened, oldest first.
    events: VecDeque<i64>,
    /// Attempts reserved and still running.
    pending: u32,
}

/// Counts attempts per [`Key`] in a sliding window, each key with its own
/// limit.
pub struct Throttle {
    window_ms: i64,
    map: Mutex<HashMap<Key, Window>>,
}

impl Throttle {
    pub fn new(window_secs: u64) -> Self {
        Self {
            window_ms: i64::try_from(window_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Reserves one attempt under every `(key, limit)` at once, or none:
    /// refused when any key already has `limit` attempts recorded in the
    /// window or running. A limit of 0 means no limit for that key.
    ///
    /// # Errors
    /// [`Refused`] with the wait until the earliest place frees up.
    pub fn reserve(&self, keys: &[(Key, u32)], now: i64) -> Result<Attempt<'_>, Refused> {
        let mut map = self.lock();
        if map.len() > MAX_KEYS {
            let cutoff = now - self.window_ms;
            map.retain(|_, w| w.pending > 0 || w.events.back().is_some_and(|t| *t > cutoff));
            if map.len() > MAX_KEYS {
                map.retain(|_, w| w.pending > 0);
            }
        }
        let mut worst: Option<u64> = None;
        for (key, limit) in keys.iter().filter(|(_, l)| *l > 0) {
            let Some(w) = map.get_mut(key) else { continue };
            while w.events.front().is_some_and(|t| *t <= now - self.window_ms) {
                w.events.pop_front();
            }
            let used = w.events.len() + w.pending as usize;
            if used >= *limit as usize {
                // Running attempts free their place when they finish
                // (within a second or so); recorded ones when they age out.
                let wait = w
                    .events
                    .front()
                    .map_or(1, |oldest| retry_after_secs(oldest + self.window_ms - now));
                worst = Some(worst.map_or(wait, |w0| w0.max(wait)));
            }
        }
        if let Some(retry_after) = worst {
            return Err(Refused { retry_after });
        }
        let keys: Vec<Key> = keys
            .iter()
            .filter(|(_, l)| *l > 0)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            map.entry(k.clone()).or_default().pending += 1;
        }
        Ok(Attempt {
            throttle: self,
            keys,
            now,
        })
    }

    /// Attempts recorded for `key` within the window ending at `now`, plus
    /// those running.
    pub fn used(&self, key: &Key, now: i64) -> usize {
        let map = self.lock();
        map.get(key).map_or(0, |w| {
            w.events
                .iter()
                .filter(|t| **t > now - self.window_ms)
                .count()
                + w.pending as usize
        })
    }

    fn finish(&self, keys: &[Key], record_at: Option<i64>) {
        let mut map = self.lock();
        for k in keys {
            if let Some(w) = map.get_mut(k) {
                w.pending = w.pending.saturating_sub(1);
                if let Some(t) = record_at {
                    w.events.push_back(t);
                    // Only the newest `limit` matter; a bound keeps one key
                    // small whatever its limit.
                    while w.events.len() > 10_000 {
                        w.events.pop_front();
                    }
                } else if w.pending == 0 && w.events.is_empty() {
                    map.remove(k);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Window>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A reserved attempt. Dropped, it frees its place (the attempt succeeded,
/// or never got to the work); [`Attempt::record`] keeps it counted.
#[must_use = "an attempt frees its place when dropped; record() keeps it counted"]
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    keys: Vec<Key>,
    now: i64,
}

impl Attempt<'_> {
    /// Counts this attempt in the window (a failure; a sign-up).
    pub fn record(mut self) {
        let keys = std::mem::take(&mut self.keys);
        self.throttle.finish(&keys, Some(self.now));
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.keys.is_empty() {
            self.throttle.finish(&self.keys, None);
        }
    }
}

/// Per name (a customerId, a login name), the few clients that used its
/// right credential recently: the owner's usual addresses, which a block
/// on the name alone does not apply to.
pub struct KnownClients {
    ttl_ms: i64,
    map: Mutex<HashMap<String, Vec<(ClientKey, i64)>>>,
}

/// Addresses remembered per name; the least recent is forgotten first.
const KNOWN_PER_NAME: usize = 8;

impl KnownClients {
    pub fn new(ttl_secs: u64) -> Self {
        Self {
            ttl_ms: i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// `client` used `name`'s right credential at `now`.
    pub fn remember(&self, name: &str, client: ClientKey, now: i64) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > MAX_KEYS {
            map.clear();
        }
        let list = map.entry(name.to_owned()).or_default();
        list.retain(|(c, _)| *c != client);
        list.push((client, now));
        if list.len() > KNOWN_PER_NAME {
            list.remove(0);
        }
    }

    /// Whether `client` used `name`'s right credential within the TTL.
    pub fn knows(&self, name: &str, client: ClientKey, now: i64) -> bool {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(name).is_some_and(|l| {
            l.iter()
                .any(|(c, t)| *c == client && now.saturating_sub(*t) < self.ttl_ms)
        })
    }
}

/// A name as throttles keep it: as given when short (every real
/// customerId and e-mail is), else a digest, so that a stranger's 60 kB
/// "customerId" costs a throttle no more memory than a real one.
pub fn name_key(name: &str) -> String {
    if name.len() <= 64 {
        name.to_owned()
    } else {
        use sha2::{Digest, Sha256};
        format!("#{}", hex::encode(&Sha256::digest(name.as_bytes())[..16]))
    }
}

/// A short digest of a name (customerId, e-mail) for audit lines: lines
/// about one name can be grouped, and the log does not collect the names
/// strangers tried.
pub fn name_digest(name: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(name.trim().to_lowercase().as_bytes());
    hex::encode(&d[..6])
}

/// The audit line of a refused credential: what was tried (`token`,
/// `console-login`, …), from which address, for which name (as a digest),
/// and why it was refused. Never the secret.
pub fn audit(what: &'static str, client: IpAddr, name: &str, reason: &str) {
    tracing::warn!(
        target: "otpgate::audit",
        what,
        client = %client,
        name = %name_digest(name),
        reason,
        "credential refused"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> ClientKey {
        ClientKey::new(s.parse().unwrap())
    }

    #[test]
    fn ipv6_clients_are_grouped_by_64_and_mapped_v4_is_v4() {
        assert_eq!(ip("2001:db8:1:2:aaaa::1"), ip("2001:db8:1:2:ffff::9"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:10.0.0.1"), ip("10.0.0.1"));
        assert_eq!(ip("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(ip("10.0.0.1").to_string(), "10.0.0.1");
    }

    #[test]
    fn reservations_count_before_the_work_finishes() {
        let t = Throttle::new(300);
        let k = Key::Client(ip("10.0.0.1"));
        let held: Vec<_> = (0..3)
            .map(|_| t.reserve(&[(k.clone(), 3)], 0).expect("within the limit"))
            .collect();
        assert_eq!(
            t.reserve(&[(k.clone(), 3)], 0).err().map(|r| r.retry_after),
            Some(1)
        );
        for a in held {
            a.record();
        }
        let r = t
            .reserve(&[(k.clone(), 3)], 1_000)
            .err()
            .expect("three failures");
        assert_eq!(r.retry_after, 299);
        assert!(t.reserve(&[(k.clone(), 3)], 300_000).is_ok(), "aged out");
    }

    #[test]
    fn a_dropped_attempt_frees_its_place_and_all_keys_or_none_are_taken() {
        let t = Throttle::new(60);
        let a = Key::Client(ip("10.0.0.1"));
        let b = Key::Customer("C-1".into());
        for _ in 0..10 {
            drop(
                t.reserve(&[(a.clone(), 1), (b.clone(), 1)], 0)
                    .expect("free"),
            );
        }
        t.reserve(&[(b.clone(), 1)], 0).expect("b").record();
        assert!(t.reserve(&[(a.clone(), 1), (b.clone(), 1)], 0).is_err());
        assert_eq!(t.used(&a, 0), 0, "a refusal reserves nothing");
        assert!(
            t.reserve(&[(a.clone(), 1), (b, 0)], 0).is_ok(),
            "0 is no limit"
        );
    }

    #[test]
    fn long_names_are_kept_as_digests() {
        assert_eq!(name_key("C-6D16D900FA3044F"), "C-6D16D900FA3044F");
        let long = "x".repeat(60_000);
        let k = name_key(&long);
        assert_eq!(k.len(), 33);
        assert_eq!(k, name_key(&long));
        assert_ne!(k, name_key(&"y".repeat(60_000)));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(1000), 1);
        assert_eq!(retry_after_secs(1001), 2);
        assert_eq!(retry_after_secs(-5), 1);
    }

    #[test]
    fn known_clients_expire() {
        let k = KnownClients::new(10);
        k.remember("C-1", ip("10.0.0.1"), 0);
        assert!(k.knows("C-1", ip("10.0.0.1"), 9_999));
        assert!(!k.knows("C-1", ip("10.0.0.1"), 10_000));
        assert!(!k.knows("C-1", ip("10.0.0.2"), 1));
        assert!(!k.knows("C-2", ip("10.0.0.1"), 1));
    }
}
