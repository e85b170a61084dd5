//! Console sessions and CSRF tokens.
//!
//! A session is a random 256-bit id in an `HttpOnly`, `SameSite=Strict`
//! cookie (`Secure` when `console.secure_cookies` is set); the server keeps
//! the session itself in memory, keyed by the SHA-256 of the id, so neither
//! a heap dump nor a debug print holds a usable cookie. Each session has its
//! own random CSRF token, put in a hidden field of every form and checked on
//! every POST.
//!
//! Sessions live in this node's memory on purpose: the store is shared with
//! other work in progress, and a session that is lost on restart costs one
//! log-in. What must hold across nodes does: an account session remembers the
//! account's token epoch at log-in, and every request reloads the account, so
//! a password change, a token revocation or a disabled account ends that
//! account's console sessions on every node at their next request.
//!
//! Forms shown before log-in (log-in, sign-up) have no session yet; they get a
//! "pre-session": a random nonce in a cookie, and a form token that is the
//! HMAC of that nonce under a key kept in the database. Nothing is stored per
//! visitor, so anonymous traffic cannot fill memory.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use otpgate_core::CustomerId;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The session cookie.
pub const SESSION_COOKIE: &str = "otpgate_session";
/// The pre-session cookie of the log-in and sign-up forms.
pub const PRE_COOKIE: &str = "otpgate_pre";
/// Cookies are sent only to the console's own paths.
const COOKIE_PATH: &str = "/console";
/// Beyond this many live sessions the least recently used are dropped, so a
/// flood of log-ins cannot exhaust memory.
const MAX_SESSIONS: usize = 100_000;
/// How long a pre-session cookie lives: long enough to fill in a form.
pub const PRE_MAX_AGE_SECS: u64 = 3600;

/// Who a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A customer account, with its token epoch at log-in (or at its last
    /// password change through this session).
    Account { id: CustomerId, epoch: i64 },
    /// The operator configured in `console.admin_email`.
    Operator,
}

/// A live session as handlers see it.
#[derive(Clone)]
pub struct Session {
    pub principal: Principal,
    pub csrf: String,
    created_at: i64,
    last_seen: i64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The CSRF token is a secret of the session: never printed.
        f.debug_struct("Session")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

/// Every console session of this node.
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
    idle_ms: i64,
    max_ms: i64,
}

impl Sessions {
    pub fn new(idle_secs: u64, max_secs: u64) -> Self {
        let ms = |s: u64| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
        Self {
            map: Mutex::new(HashMap::new()),
            idle_ms: ms(idle_secs),
            max_ms: ms(max_secs),
        }
    }

    /// Starts a session; returns the cookie value (the only copy of the id)
    /// and the session.
    pub fn create(&self, principal: Principal, now: i64) -> (String, Session) {
        let id = random_token();
        let session = Session {
            principal,
            csrf: random_token(),
            created_at: now,
            last_seen: now,
        };
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| self.alive(s, now));
            while map.len() >= MAX_SESSIONS {
                let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| *k)
                else {
                    break;
                };
                map.remove(&oldest);
            }
        }
        if let Some(key) = key_of(&id) {
            map.insert(key, session.clone());
        }
        (id, session)
    }

    /// The live session behind a cookie value, marking it used now. An
    /// expired session is removed and reads as none.
    pub fn get(&self, cookie: &str, now: i64) -> Option<Session> {
        let key = key_of(cookie)?;
        let mut map = self.lock();
        let alive = self.alive(map.get(&key)?, now);
        if !alive {
            map.remove(&key);
            return None;
        }
        let s = map.get_mut(&key)?;
        s.last_seen = now;
        Some(s.clone())
    }

    pub fn remove(&self, cookie: &str) {
        if let Some(key) = key_of(cookie) {
            self.lock().remove(&key);
        }
    }

    /// After a password change through this session: it stays valid under
    /// the account's new epoch, and the account's other sessions on this
    /// node end now (those on other nodes end at their next request, when
    /// they see the new epoch).
    pub fn password_changed(&self, cookie: &str, id: &CustomerId, epoch: i64) {
        let keep = key_of(cookie);
        let mut map = self.lock();
        map.retain(|k, s| {
            Some(*k) == keep || !matches!(&s.principal, Principal::Account { id: i, .. } if i == id)
        });
        if let Some(s) = keep.and_then(|k| map.get_mut(&k)) {
            s.principal = Principal::Account {
                id: id.clone(),
                epoch,
            };
        }
    }

    /// Ends every session of an account on this node (it was disabled).
    pub fn end_account(&self, id: &CustomerId) {
        self.lock()
            .retain(|_, s| !matches!(&s.principal, Principal::Account { id: i, .. } if i == id));
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cookie's `Max-Age`: the absolute lifetime (the idle timeout is
    /// enforced here, on the server).
    pub fn max_age_secs(&self) -> u64 {
        u64::try_from(self.max_ms / 1000).unwrap_or(0)
    }

    fn alive(&self, s: &Session, now: i64) -> bool {
        now.saturating_sub(s.last_seen) < self.idle_ms
            && now.saturating_sub(s.created_at) < self.max_ms
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// 32 random bytes, URL-safe base64 (43 characters).
pub fn random_token() -> String {
    let mut raw = [0u8; 32];
    rand::fill(&mut raw);
    URL_SAFE_NO_PAD.encode(raw)
}

/// The map key of a cookie value: SHA-256 of the decoded 32-byte id. Any
/// other shape is no session.
fn key_of(cookie: &str) -> Option<[u8; 32]> {
    if cookie.len() != 43 {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(cookie).ok()?;
    if raw.len() != 32 {
        return None;
    }
    Some(Sha256::digest(&raw).into())
}

/// Compares a submitted token with the expected one in constant time.
pub fn tokens_match(expected: &str, submitted: &str) -> bool {
    !expected.is_empty()
        && expected.len() == submitted.len()
        && bool::from(expected.as_bytes().ct_eq(submitted.as_bytes()))
}

/// The form token of a pre-session: HMAC-SHA256 of its nonce.
pub fn pre_token(key: &[u8], nonce: &str) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(b"otpgate-console-pre-session:");
    mac.update(nonce.as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// Whether a pre-session nonce has the shape [`random_token`] gives.
pub fn plausible_nonce(nonce: &str) -> bool {
    nonce.len() == 43
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The value of cookie `name` among the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// A `Set-Cookie` value for one of the console's cookies.
pub fn set_cookie(name: &str, value: &str, max_age_secs: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!(
        "{name}={value}; Path={COOKIE_PATH}; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{secure}"
    );
    // Names are constants and values are URL-safe base64: always valid.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A `Set-Cookie` value that deletes one of the console's cookies.
pub fn clear_cookie(name: &str, secure: bool) -> HeaderValue {
    set_cookie(name, "", 0, secure)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> Principal {
        Principal::Account {
            id: CustomerId::parse("C-6D16D900FA3044F").expect("id"),
            epoch: 0,
        }
    }

    #[test]
    fn a_session_is_found_by_its_cookie_and_ends_when_idle_or_old() {
        let s = Sessions::new(60, 3600);
        let (id, _) = s.create(account(), 0);
        assert_eq!(id.len(), 43);
        assert!(s.get(&id, 59_000).is_some());
        // Used at 59 s: idle time counts from there.
        assert!(s.get(&id, 118_000).is_some());
        assert!(s.get(&id, 178_001).is_none(), "idle past 60 s");
        assert!(s.is_empty(), "an expired session is removed");

        let (id, _) = s.create(account(), 0);
        for t in (30_000..3_600_000).step_by(30_000) {
            assert!(s.get(&id, t).is_some());
        }
        assert!(s.get(&id, 3_600_000).is_none(), "older than the maximum");
    }

    #[test]
    fn malformed_or_unknown_cookies_are_no_session() {
        let s = Sessions::new(60, 3600);
        let _ = s.create(account(), 0);
        for bad in ["", "x", &"A".repeat(43), &"é".repeat(22), &random_token()] {
            assert!(s.get(bad, 1).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn each_session_has_its_own_csrf_token() {
        let s = Sessions::new(60, 3600);
        let a = s.get(&s.create(account(), 0).0, 0).expect("a");
        let b = s.get(&s.create(account(), 0).0, 0).expect("b");
        assert_ne!(a.csrf, b.csrf);
        assert!(tokens_match(&a.csrf, &a.csrf.clone()));
        assert!(!tokens_match(&a.csrf, &b.csrf));
        assert!(!tokens_match(&a.csrf, ""));
        assert!(!tokens_match("", ""));
        assert!(!format!("{a:?}").contains(&a.csrf));
    }

    #[test]
    fn a_password_change_keeps_this_session_and_ends_the_others() {
        let s = Sessions::new(60, 3600);
        let id = CustomerId::parse("C-6D16D900FA3044F").expect("id");
        let (mine, _) = s.create(account(), 0);
        let (other, _) = s.create(account(), 0);
        let (operator, _) = s.create(Principal::Operator, 0);
        s.password_changed(&mine, &id, 1);
        assert_eq!(
            s.get(&mine, 1).expect("kept").principal,
            Principal::Account { id, epoch: 1 }
        );
        assert!(s.get(&other, 1).is_none());
        assert!(s.get(&operator, 1).is_some());
    }

    #[test]
    fn pre_session_tokens_depend_on_key_and_nonce() {
        let n1 = random_token();
        let n2 = random_token();
        assert!(plausible_nonce(&n1));
        assert!(!plausible_nonce("short"));
        assert_eq!(pre_token(b"k", &n1), pre_token(b"k", &n1));
        assert_ne!(pre_token(b"k", &n1), pre_token(b"k", &n2));
        assert_ne!(pre_token(b"k", &n1), pre_token(b"j", &n1));
    }

    #[test]
    fn cookies_are_read_from_every_cookie_header() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("otpgate_session=xyz"),
        );
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "c"), None);
        let v = set_cookie(SESSION_COOKIE, "abc", 10, true);
        let v = v.to_str().expect("ascii");
        for part in [
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/console",
            "Max-Age=10",
        ] {
            assert!(v.contains(part), "{v}");
        }
        assert!(
            !set_cookie(SESSION_COOKIE, "abc", 10, false)
                .to_str()
                .expect("ascii")
                .contains("Secure")
        );
    }
}
