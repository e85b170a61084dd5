//! The SMPP 3.4 channel: keeps a bind (or a transmitter + receiver pair) to
//! one SMSC up, submits each message with `submit_sm`, and records the
//! delivery receipts that come back as `deliver_sm`.
//!
//! Layers, bottom up (as mini-redis layers frame / connection / cmd):
//! [`pdu`] encodes and decodes PDUs; [`session`] owns one connection with
//! its sequence numbers, window and keepalives; this module supervises
//! sessions (reconnecting with backoff), caps the submit rate, builds
//! `submit_sm` from a message ([`coding`] picks GSM 03.38 or UCS-2) and
//! classifies `command_status` for the worker; [`dlr`] reads receipts.
//!
//! Why not a crate: `smpp34` (the one crate that binds as 3.4) stores its
//! `window_size` but never enforces it, has no reconnect, logs through `log`
//! at info per PDU, and panics on some API misuse; `rusmppc` binds as v5
//! only. What otpgate needs of SMPP is small enough to own.

pub mod coding;
mod config;
pub mod dlr;
pub mod pdu;
pub mod session;

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use otpgate_core::SecretString;
use rand::RngExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::channel::{Accepted, Channel, ChannelError, ChannelHealth, Outgoing};
pub use config::{BindMode, SmppConfig};

use crate::receipt::ReceiptSink;
use crate::setup::{ChannelSetup, ConfigError, EnvLookup, StartContext, Starter};
use pdu::{Bind, Body, ShortMessage, status};
use session::{BindKind, DeliverHandler, Session, SessionConfig, SessionError, TlsSettings};

/// A checked SMPP configuration with its secret resolved.
#[derive(Clone)]
pub struct SmppSettings {
    pub host: String,
    pub port: u16,
    pub tls: Option<TlsSettings>,
    pub system_id: String,
    pub password: SecretString,
    pub system_type: String,
    pub bind_mode: BindMode,
    pub source_addr: String,
    pub source_ton: u8,
    pub source_npi: u8,
    pub service_type: String,
    pub window: usize,
    pub max_per_second: Option<u32>,
    pub enquire_link: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub registered_delivery: bool,
}

impl std::fmt::Debug for SmppSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmppSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("system_id", &self.system_id)
            .field("password", &self.password)
            .field("bind_mode", &self.bind_mode)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl SmppSettings {
    /// Plain-TCP settings with the config defaults, for tests and tools.
    pub fn new(host: impl Into<String>, port: u16, system_id: &str, password: &str) -> Self {
        Self {
            host: host.into(),
            port,
            tls: None,
            system_id: system_id.to_owned(),
            password: SecretString::new(password),
            system_type: String::new(),
            bind_mode: BindMode::Transceiver,
            source_addr: "OTPGATE".to_owned(),
            source_ton: 5,
            source_npi: 0,
            service_type: String::new(),
            window: 10,
            max_per_second: None,
            enquire_link: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(30),
            registered_delivery: true,
        }
    }
}

/// Checks an `[channels.NAME]` SMPP table and resolves its password.
///
/// # Errors
/// [`ConfigError`] for values SMPP 3.4 cannot carry or a missing secret.
pub fn prepare(
    name: &str,
    c: &SmppConfig,
    env: EnvLookup<'_>,
) -> Result<SmppSettings, ConfigError> {
    let bad = |r: &str| ConfigError::invalid(name, r);
    if c.host.trim().is_empty() {
        return Err(bad("host is empty"));
    }
    // Maxima from §4.1.1 (the field sizes include the NUL).
    if c.system_id.is_empty() || c.system_id.len() > 15 {
        return Err(bad("system_id must be 1 to 15 characters"));
    }
    if c.system_type.len() > 12 {
        return Err(bad("system_type must be at most 12 characters"));
    }
    let password = c.password().resolve(name, env)?.unwrap_or_default();
    if password.expose().len() > 8 {
        return Err(bad(
            "password must be at most 8 characters (SMPP 3.4 §4.1.1)",
        ));
    }
    if c.service_type.len() > 5 {
        return Err(bad("service_type must be at most 5 characters"));
    }
    let (ton, npi, source) = source_address(&c.source_addr).map_err(|r| bad(&r))?;
    if c.window == 0 {
        return Err(bad("window must be at least 1"));
    }
    if c.max_per_second == Some(0) {
        return Err(bad(
            "max_per_second must be at least 1 (omit it for no cap)",
        ));
    }
    if c.reconnect_min_ms == 0 || c.reconnect_max_ms < c.reconnect_min_ms {
        return Err(bad("reconnect_min_ms must be > 0 and ≤ reconnect_max_ms"));
    }
    if c.request_timeout_ms == 0 || c.connect_timeout_ms == 0 || c.enquire_link_ms < 1000 {
        return Err(bad("timeouts must be > 0 and enquire_link_ms ≥ 1000"));
    }
    let tls = if c.tls {
        Some(tls_settings(name, c)?)
    } else {
        None
    };
    Ok(SmppSettings {
        host: c.host.clone(),
        port: c.port,
        tls,
        system_id: c.system_id.clone(),
        password,
        system_type: c.system_type.clone(),
        bind_mode: c.bind,
        source_addr: source,
        source_ton: c.source_ton.unwrap_or(ton),
        source_npi: c.source_npi.unwrap_or(npi),
        service_type: c.service_type.clone(),
        window: c.window as usize,
        max_per_second: c.max_per_second,
        enquire_link: Duration::from_millis(c.enquire_link_ms),
        connect_timeout: Duration::from_millis(c.connect_timeout_ms),
        request_timeout: Duration::from_millis(c.request_timeout_ms),
        reconnect_min: Duration::from_millis(c.reconnect_min_ms),
        reconnect_max: Duration::from_millis(c.reconnect_max_ms),
        registered_delivery: c.registered_delivery,
    })
}

impl ChannelSetup for SmppConfig {
    fn prepare(&self, name: &str, env: EnvLookup<'_>) -> Result<Starter, ConfigError> {
        let settings = prepare(name, self, env)?;
        Ok(Box::new(move |name: &str, ctx: &StartContext| {
            Arc::new(SmppChannel::start(name, settings, ctx.receipts.clone())) as Arc<dyn Channel>
        }))
    }

    /// Sessions bind in the background.
    fn needs_runtime(&self) -> bool {
        true
    }
}

/// Detects the sender's TON/NPI (§5.2.5, §5.2.6) and normalises it.
///
/// # Errors
/// A reason when the sender cannot be sent.
pub fn source_address(s: &str) -> Result<(u8, u8, String), String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("source_addr is empty".into());
    }
    let digits = s.strip_prefix('+').unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if digits.len() > 20 {
            return Err("source_addr has more than 20 digits".into());
        }
        // International when written with + or long enough to be E.164.
        let ton = if s.starts_with('+') || digits.len() >= 10 {
            1
        } else {
            0
        };
        return Ok((ton, 1, digits.to_owned()));
    }
    // Alphanumeric senders (TON 5) are at most 11 characters: the GSM
    // TP-OA field holds 11 GSM 7-bit characters.
    if s.chars().count() > 11 || !s.is_ascii() {
        return Err("an alphanumeric source_addr must be at most 11 ASCII characters".into());
    }
    Ok((5, 0, s.to_owned()))
}

fn tls_settings(name: &str, c: &SmppConfig) -> Result<TlsSettings, ConfigError> {
    use tokio_rustls::rustls::{self, RootCertStore, pki_types};
    let bad = |r: String| ConfigError::invalid(name, r);
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &c.tls_ca_file {
        use pki_types::pem::PemObject;
        let certs = pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(format!("tls_ca_file {}: {e}", path.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| bad(format!("tls_ca_file {}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("tls_ca_file {}: {e}", path.display())))?;
        }
    }
    if roots.is_empty() {
        return Err(bad(
            "tls = true but no CA certificates were found (system store empty, no tls_ca_file)"
                .into(),
        ));
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server = c.tls_server_name.clone().unwrap_or_else(|| c.host.clone());
    let server_name = pki_types::ServerName::try_from(server)
        .map_err(|e| bad(format!("tls_server_name: {e}")))?;
    Ok(TlsSettings {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
    })
}

/// What a `command_status` in a `submit_sm_resp` means for the worker
/// (§5.1.3). Throttling and queue-full are the SMSC asking to slow down;
/// address, length and parameter errors will not change on a retry.
pub fn classify(st: u32) -> ChannelError {
    let what = format!("SMSC answered {} ({st:#010x})", status::name(st));
    match st {
        status::ESME_RTHROTTLED | status::ESME_RMSGQFUL => ChannelError::Transient(what),
        status::ESME_RINVMSGLEN
        | status::ESME_RINVCMDLEN
        | status::ESME_RINVPRTFLG
        | status::ESME_RINVREGDLVFLG
        | status::ESME_RINVSRCADR
        | status::ESME_RINVDSTADR
        | status::ESME_RINVSERTYP
        | status::ESME_RINVESMCLASS
        | status::ESME_RINVSRCTON
        | status::ESME_RINVSRCNPI
        | status::ESME_RINVDSTTON
        | status::ESME_RINVDSTNPI
        | status::ESME_RINVSCHED
        | status::ESME_RINVEXPIRY
        | status::ESME_RINVDFTMSGID
        | status::ESME_RX_P_APPN
        | status::ESME_RX_R_APPN
        | status::ESME_RINVOPTPARSTREAM
        | status::ESME_ROPTPARNOTALLWD
        | status::ESME_RINVPARLEN
        | status::ESME_RMISSINGOPTPARAM
        | status::ESME_RINVOPTPARAMVAL => ChannelError::Permanent(what),
        // Our bind is in the wrong state: this session is no good, another
        // channel may be.
        status::ESME_RINVBNDSTS | status::ESME_RINVCMDID => ChannelError::Unavailable(what),
        // RSYSERR, RX_T_APPN, RSUBMITFAIL, RUNKNOWNERR and vendor codes:
        // worth another try; the validity period bounds the retries.
        _ => ChannelError::Transient(what),
    }
}

/// Spaces submits at most `per_second` apart per bind. No burst: SMSCs
/// count per second and throttle past it.
struct RateLimiter {
    interval: Duration,
    next: Mutex<Instant>,
}

impl RateLimiter {
    fn new(per_second: u32) -> Self {
        Self {
            interval: Duration::from_secs(1) / per_second.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for the next slot; `false` (no slot taken) when it is more than
    /// `limit` away: a message must not wait so long behind the cap that
    /// its outbox lease runs out and another worker sends it too.
    async fn acquire_within(&self, limit: Duration) -> bool {
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let slot = (*next).max(now);
            if slot.duration_since(now) > limit {
                return false;
            }
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
        true
    }
}

#[derive(Default)]
struct State {
    transmitter: Option<Arc<Session>>,
    receiver_up: bool,
    last_error: Option<String>,
}

struct Shared {
    name: String,
    settings: SmppSettings,
    state: RwLock<State>,
    limiter: Option<RateLimiter>,
}

impl Shared {
    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn state_mut(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_bound(&self, kind: BindKind, session: Option<Arc<Session>>) {
        let mut st = self.state_mut();
        match kind {
            BindKind::Transmitter => st.transmitter = session,
            BindKind::Receiver => st.receiver_up = session.is_some(),
            BindKind::Transceiver => {
                st.receiver_up = session.is_some();
                st.transmitter = session;
            }
        }
    }

    fn session_config(&self, kind: BindKind) -> SessionConfig {
        let s = &self.settings;
        SessionConfig {
            host: s.host.clone(),
            port: s.port,
            tls: s.tls.clone(),
            kind,
            bind: Bind {
                system_id: s.system_id.clone(),
                password: s.password.expose().to_owned(),
                system_type: s.system_type.clone(),
                interface_version: pdu::INTERFACE_VERSION,
                addr_ton: 0,
                addr_npi: 0,
                address_range: String::new(),
            },
            connect_timeout: s.connect_timeout,
            request_timeout: s.request_timeout,
            enquire_link: s.enquire_link,
            window: s.window,
        }
    }
}

/// Receipts from this channel's sessions into the sink.
struct Receipts {
    channel: String,
    sink: Arc<dyn ReceiptSink>,
}

#[async_trait]
impl DeliverHandler for Receipts {
    async fn on_deliver_sm(&self, sm: ShortMessage) -> u32 {
        let Some(receipt) = dlr::parse(&sm) else {
            // A mobile-originated message: otpgate has no use for it, but it
            // is acknowledged so the SMSC does not resend it forever.
            debug!(
                channel = %self.channel,
                octets = sm.short_message.len(),
                "ignoring a deliver_sm that is not a receipt"
            );
            return status::ESME_ROK;
        };
        if receipt.status.is_none() {
            return status::ESME_ROK;
        }
        match self.sink.record(&self.channel, &receipt).await {
            Ok(_) => status::ESME_ROK,
            Err(e) => {
                // §5.1.3 ESME_RX_T_APPN: "temporary app error", the SMSC
                // retries the receipt later.
                warn!(channel = %self.channel, error = %e, "could not record a receipt");
                status::ESME_RX_T_APPN
            }
        }
    }
}

/// An SMSC reached over SMPP 3.4; see the module docs.
pub struct SmppChannel {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl SmppChannel {
    /// Starts binding in the background and returns at once; until the bind
    /// is up, sends answer [`ChannelError::Unavailable`].
    ///
    /// # Panics
    /// Outside a tokio runtime ([`crate::config::build`] checks first).
    pub fn start(
        name: impl Into<String>,
        settings: SmppSettings,
        receipts: Arc<dyn ReceiptSink>,
    ) -> Self {
        let name = name.into();
        let shared = Arc::new(Shared {
            name: name.clone(),
            limiter: settings.max_per_second.map(RateLimiter::new),
            settings,
            state: RwLock::new(State::default()),
        });
        let handler: Arc<dyn DeliverHandler> = Arc::new(Receipts {
            channel: name,
            sink: receipts,
        });
        let shutdown = CancellationToken::new();
        let kinds: &[BindKind] = match shared.settings.bind_mode {
            BindMode::Transceiver => &[BindKind::Transceiver],
            BindMode::TransmitterReceiver => &[BindKind::Transmitter, BindKind::Receiver],
        };
        let tasks = kinds
            .iter()
            .map(|&kind| {
                tokio::spawn(supervise(
                    shared.clone(),
                    kind,
                    handler.clone(),
                    shutdown.clone(),
                ))
            })
            .collect();
        Self {
            shared,
            shutdown,
            tasks: Mutex::new(tasks),
        }
    }

    /// Waits until the channel can submit, or `limit` passes; for tests and
    /// start-up logs.
    pub async fn wait_bound(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self
                .shared
                .state()
                .transmitter
                .as_ref()
                .is_some_and(|s| s.is_open())
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn build_submit(&self, msg: &Outgoing) -> Result<ShortMessage, ChannelError> {
        let s = &self.shared.settings;
        let encoded =
            coding::encode(&msg.text).map_err(|e| ChannelError::Permanent(e.to_string()))?;
        Ok(ShortMessage {
            service_type: s.service_type.clone(),
            source_addr_ton: s.source_ton,
            source_addr_npi: s.source_npi,
            source_addr: s.source_addr.clone(),
            // §5.2.5/§5.2.6: international number, E.164 numbering plan.
            dest_addr_ton: 1,
            dest_addr_npi: 1,
            destination_addr: msg.destination.e164_digits(),
            esm_class: 0,
            protocol_id: 0,
            priority_flag: 0,
            schedule_delivery_time: String::new(),
            validity_period: String::new(),
            // §5.2.17: bit 0 = receipt on final outcome, success or failure.
            registered_delivery: u8::from(s.registered_delivery),
            replace_if_present_flag: 0,
            data_coding: encoded.data_coding,
            sm_default_msg_id: 0,
            short_message: encoded.octets,
            tlvs: Vec::new(),
        })
    }
}

async fn supervise(
    shared: Arc<Shared>,
    kind: BindKind,
    handler: Arc<dyn DeliverHandler>,
    shutdown: CancellationToken,
) {
    let cfg = shared.session_config(kind);
    let name = shared.name.clone();
    let mut failures: u32 = 0;
    loop {
        let attempt = tokio::select! {
            r = Session::connect(&cfg, handler.clone()) => r,
            () = shutdown.cancelled() => break,
        };
        match attempt {
            Ok(session) => {
                failures = 0;
                let session = Arc::new(session);
                info!(
                    channel = %name,
                    mode = kind.as_str(),
                    smsc = %session.smsc_id,
                    "SMPP bound"
                );
                shared.set_bound(kind, Some(session.clone()));
                tokio::select! {
                    () = session.closed() => {
                        shared.set_bound(kind, None);
                        let why = format!("{} bind lost: {}", kind.as_str(), session.close_reason());
                        warn!(channel = %name, error = %why, "SMPP session ended");
                        shared.state_mut().last_error = Some(why);
                    }
                    () = shutdown.cancelled() => {
                        shared.set_bound(kind, None);
                        session.unbind().await;
                        info!(channel = %name, mode = kind.as_str(), "SMPP unbound");
                        break;
                    }
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let why = format!("{} bind failed: {e}", kind.as_str());
                warn!(channel = %name, error = %why, failures, "SMPP connect failed");
                shared.state_mut().last_error = Some(why);
            }
        }
        let delay = reconnect_delay(&shared.settings, failures);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => break,
        }
    }
}

/// Exponential from `reconnect_min`, capped at `reconnect_max`, jittered in
/// its upper half so a fleet of nodes does not reconnect in step.
fn reconnect_delay(s: &SmppSettings, failures: u32) -> Duration {
    let min = s.reconnect_min.as_millis() as u64;
    let max = s.reconnect_max.as_millis() as u64;
    let exp = min
        .saturating_mul(1u64 << failures.saturating_sub(1).min(20))
        .min(max)
        .max(1);
    let half = exp / 2;
    Duration::from_millis(half + rand::rng().random_range(0..=exp - half))
}

#[async_trait]
impl Channel for SmppChannel {
    fn name(&self) -> &str {
        &self.shared.name
    }

    async fn send(&self, msg: &Outgoing) -> Result<Accepted, ChannelError> {
        let sm = self.build_submit(msg)?;
        let session = {
            let st = self.shared.state();
            match &st.transmitter {
                Some(s) if s.is_open() => s.clone(),
                _ => {
                    return Err(ChannelError::Unavailable(match &st.last_error {
                        Some(e) => format!("not bound ({e})"),
                        None => "not bound yet".to_owned(),
                    }));
                }
            }
        };
        if let Some(limiter) = &self.shared.limiter
            && !limiter
                .acquire_within(self.shared.settings.request_timeout)
                .await
        {
            return Err(ChannelError::Transient(format!(
                "over the {} submit_sm/s cap for longer than the request timeout",
                self.shared.settings.max_per_second.unwrap_or_default()
            )));
        }
        match session.request(Body::SubmitSm(sm)).await {
            Ok(resp) if resp.status == status::ESME_ROK => match resp.body {
                Body::SubmitSmResp { message_id } => {
                    debug!(
                        channel = %self.shared.name,
                        message = msg.message_id,
                        gateway_id = %message_id,
                        "submit_sm accepted"
                    );
                    Ok(Accepted {
                        gateway_id: (!message_id.is_empty()).then_some(message_id),
                    })
                }
                // generic_nack with status 0 is nonsense; try again later.
                _ => Err(ChannelError::Transient(
                    "SMSC answered submit_sm with generic_nack".into(),
                )),
            },
            Ok(resp) => Err(classify(resp.status)),
            // At-least-once: the SMSC may have taken it before the link
            // died; the worker retries (possibly elsewhere) all the same.
            Err(SessionError::Closed(why)) => {
                Err(ChannelError::Unavailable(format!("bind lost: {why}")))
            }
            Err(e @ SessionError::Timeout(_)) => Err(ChannelError::Transient(e.to_string())),
            Err(SessionError::Encode(e)) => Err(ChannelError::Permanent(e.to_string())),
        }
    }

    fn health(&self) -> ChannelHealth {
        let st = self.shared.state();
        let tx_up = st.transmitter.as_ref().is_some_and(|s| s.is_open());
        let up = match self.shared.settings.bind_mode {
            BindMode::Transceiver => tx_up,
            BindMode::TransmitterReceiver => tx_up && st.receiver_up,
        };
        ChannelHealth {
            name: self.shared.name.clone(),
            kind: "smpp",
            up,
            last_error: st.last_error.clone(),
        }
    }

    async fn close(&self) {
        self.shutdown.cancel();
        let tasks: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Drop for SmppChannel {
    fn drop(&mut self) {
        // Without a close(), still stop reconnecting.
        self.shutdown.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_detection() {
        assert_eq!(source_address("OTPGATE").unwrap(), (5, 0, "OTPGATE".into()));
        assert_eq!(
            source_address("+447700900123").unwrap(),
            (1, 1, "447700900123".into())
        );
        assert_eq!(source_address("12345").unwrap(), (0, 1, "12345".into()));
        assert!(source_address("TWELVECHARSX").is_err());
        assert!(source_address("").is_err());
    }

    #[test]
    fn status_classes() {
        let transient = ChannelError::Transient(String::new());
        let permanent = ChannelError::Permanent(String::new());
        let unavailable = ChannelError::Unavailable(String::new());
        for (code, class) in [
            (status::ESME_RTHROTTLED, &transient),
            (status::ESME_RMSGQFUL, &transient),
            (status::ESME_RINVDSTADR, &permanent),
            (status::ESME_RINVSRCADR, &permanent),
            (status::ESME_RINVMSGLEN, &permanent),
            (status::ESME_RSYSERR, &transient),
            (status::ESME_RINVBNDSTS, &unavailable),
            (0x0400, &transient),
        ] {
            let got = classify(code);
            assert_eq!(
                std::mem::discriminant(&got),
                std::mem::discriminant(class),
                "status {code:#x}: {got:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_rate_cap_refuses_rather_than_waits_past_the_limit() {
        let l = RateLimiter::new(2);
        let limit = Duration::from_millis(600);
        assert!(l.acquire_within(limit).await);
        // The next slot is 500 ms away: within 600 ms, so taken (and waited).
        let t = Instant::now();
        assert!(l.acquire_within(limit).await);
        assert!(t.elapsed() >= Duration::from_millis(450));
        // Two more would need 500 and 1000 ms: the second is refused at once.
        let t = Instant::now();
        let (a, b) = tokio::join!(l.acquire_within(limit), l.acquire_within(limit));
        assert_eq!(a as u8 + b as u8, 1, "exactly one slot within the limit");
        assert!(t.elapsed() < Duration::from_millis(700));
    }

    #[test]
    fn reconnect_delay_grows_and_is_capped() {
        let mut s = SmppSettings::new("h", 1, "id", "pw");
        s.reconnect_min = Duration::from_millis(100);
        s.reconnect_max = Duration::from_millis(1000);
        for _ in 0..50 {
            let d0 = reconnect_delay(&s, 0).as_millis();
            assert!((50..=100).contains(&d0), "{d0}");
            let d10 = reconnect_delay(&s, 10).as_millis();
            assert!((500..=1000).contains(&d10), "{d10}");
        }
    }
}
