//! One SMPP 3.4 session: the connection (socket + read buffer, framing PDUs
//! with [`super::pdu`]), the bind handshake (§2.2, §4.1), and a driver task
//! that owns the socket and with it the sequence numbers (§3.2), the window
//! of outstanding requests (§2.5 "Asynchronous operation"), `enquire_link`
//! keepalives (§4.11), answers to the SMSC's own requests (`deliver_sm`,
//! `enquire_link`, `unbind`) and the orderly `unbind` (§4.2).
//!
//! The layering follows mini-redis: `Connection` frames bytes, the driver
//! turns frames into request/response bookkeeping, and [`Session::request`]
//! is the one operation the channel uses. When the connection dies every
//! caller still waiting is answered at once with [`SessionError::Closed`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::pdu::{self, Bind, Body, Header, MAX_SEQUENCE, Pdu, PduError, ShortMessage, command};

/// Which bind (§2.2): a transmitter submits, a receiver gets `deliver_sm`,
/// a transceiver does both over one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindKind {
    Transmitter,
    Receiver,
    Transceiver,
}

impl BindKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BindKind::Transmitter => "transmitter",
            BindKind::Receiver => "receiver",
            BindKind::Transceiver => "transceiver",
        }
    }
}

/// Everything one connection attempt needs.
#[derive(Clone)]
pub struct SessionConfig {
    pub host: String,
    pub port: u16,
    pub tls: Option<TlsSettings>,
    pub kind: BindKind,
    /// system_id, password, system_type and addressing of the bind PDU.
    pub bind: Bind,
    pub connect_timeout: Duration,
    /// How long a request waits for its response (and for a window slot).
    pub request_timeout: Duration,
    /// Idle time after which an `enquire_link` is sent.
    pub enquire_link: Duration,
    /// Outstanding requests at most (≥ 1).
    pub window: usize,
}

/// TLS for the connection: a rustls connector and the name the SMSC's
/// certificate must carry.
#[derive(Clone)]
pub struct TlsSettings {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: tokio_rustls::rustls::pki_types::ServerName<'static>,
}

/// The channel's side of an incoming `deliver_sm`.
#[async_trait]
pub trait DeliverHandler: Send + Sync + 'static {
    /// Returns the `command_status` for the `deliver_sm_resp`.
    async fn on_deliver_sm(&self, sm: ShortMessage) -> u32;
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} failed: {1}")]
    Connect(String, String),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("no answer within {0} ms")]
    Timeout(u128),
    #[error("bind refused by the SMSC: {} ({status:#010x})", pdu::status::name(*status))]
    BindRejected { status: u32 },
    #[error("protocol error during bind: {0}")]
    Protocol(String),
}

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The connection is gone (or went while waiting): the request may or may
    /// not have reached the SMSC.
    #[error("session closed: {0}")]
    Closed(String),
    #[error("no response within {0} ms")]
    Timeout(u128),
    /// The request could not be encoded (a field too long): it never left.
    #[error("cannot encode request: {0}")]
    Encode(PduError),
}

enum Outbound {
    Request {
        body: Body,
        reply: oneshot::Sender<Result<Pdu, SessionError>>,
    },
    Response(Pdu),
    Unbind(oneshot::Sender<()>),
}

/// A bound session. Cheap to share behind an `Arc`; dropping the last handle
/// ends the driver.
pub struct Session {
    out: mpsc::Sender<Outbound>,
    window: Arc<Semaphore>,
    closed: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
    request_timeout: Duration,
    /// The SMSC's `system_id` from the bind response.
    pub smsc_id: String,
}

impl Session {
    /// Connects, binds and starts the driver.
    ///
    /// # Errors
    /// [`ConnectError`]: refused, timed out, TLS or bind failure.
    pub async fn connect(
        cfg: &SessionConfig,
        handler: Arc<dyn DeliverHandler>,
    ) -> Result<Session, ConnectError> {
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let tcp = timeout(cfg.connect_timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| ConnectError::Timeout(cfg.connect_timeout.as_millis()))?
            .map_err(|e| ConnectError::Connect(addr.clone(), e.to_string()))?;
        // Small PDUs, request/response: Nagle would only add latency.
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match &cfg.tls {
            None => Box::new(tcp),
            Some(tls) => Box::new(
                timeout(
                    cfg.connect_timeout,
                    tls.connector.connect(tls.server_name.clone(), tcp),
                )
                .await
                .map_err(|_| ConnectError::Timeout(cfg.connect_timeout.as_millis()))?
                .map_err(|e| ConnectError::Tls(e.to_string()))?,
            ),
        };
        let mut conn = Connection::new(stream);
        let smsc_id = timeout(cfg.connect_timeout, bind(&mut conn, cfg))
            .await
            .map_err(|_| ConnectError::Timeout(cfg.connect_timeout.as_millis()))??;

        let window = cfg.window.max(1);
        let (tx, rx) = mpsc::channel(window * 2 + 8);
        let session = Session {
            out: tx.clone(),
            window: Arc::new(Semaphore::new(window)),
            closed: CancellationToken::new(),
            reason: Arc::new(Mutex::new(None)),
            request_timeout: cfg.request_timeout,
            smsc_id,
        };
        let driver = Driver {
            conn,
            rx,
            responses: tx.downgrade(),
            handler,
            pending: HashMap::new(),
            next_seq: 2, // 1 was the bind
            enquire: None,
            unbinding: None,
            last_read: Instant::now(),
            cfg: cfg.clone(),
            reason: session.reason.clone(),
        };
        let closed = session.closed.clone();
        let window = session.window.clone();
        tokio::spawn(async move {
            driver.run().await;
            // Wake everyone waiting for a slot; they see a closed session.
            window.close();
            closed.cancel();
        });
        Ok(session)
    }

    /// Sends a request and waits for its response, holding one window slot
    /// meanwhile. The response may carry an error `command_status`: that is
    /// the caller's to read.
    ///
    /// # Errors
    /// [`SessionError`]: closed, timed out, or not encodable.
    pub async fn request(&self, body: Body) -> Result<Pdu, SessionError> {
        let limit = self.request_timeout;
        let permit = tokio::select! {
            p = timeout(limit, self.window.clone().acquire_owned()) => match p {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => return Err(self.closed_error()),
                Err(_) => return Err(SessionError::Timeout(limit.as_millis())),
            },
            () = self.closed.cancelled() => return Err(self.closed_error()),
        };
        let (reply, rx) = oneshot::channel();
        if self
            .out
            .send(Outbound::Request { body, reply })
            .await
            .is_err()
        {
            return Err(self.closed_error());
        }
        let r = match timeout(limit, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => Err(SessionError::Timeout(limit.as_millis())),
        };
        drop(permit);
        r
    }

    /// Whether the connection is still up.
    pub fn is_open(&self) -> bool {
        !self.closed.is_cancelled()
    }

    /// Resolves when the connection is gone.
    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "open".to_owned())
    }

    /// Unbinds politely (§4.2) and waits, briefly, for the SMSC to answer
    /// and the connection to close.
    pub async fn unbind(&self) {
        let (done, rx) = oneshot::channel();
        if self.out.send(Outbound::Unbind(done)).await.is_ok() {
            let _ = timeout(Duration::from_secs(2), rx).await;
        }
        let _ = timeout(Duration::from_secs(2), self.closed()).await;
    }

    fn closed_error(&self) -> SessionError {
        SessionError::Closed(self.close_reason())
    }
}

async fn bind(conn: &mut Connection, cfg: &SessionConfig) -> Result<String, ConnectError> {
    let body = match cfg.kind {
        BindKind::Transmitter => Body::BindTransmitter(cfg.bind.clone()),
        BindKind::Receiver => Body::BindReceiver(cfg.bind.clone()),
        BindKind::Transceiver => Body::BindTransceiver(cfg.bind.clone()),
    };
    let want = body.command_id() | command::RESPONSE_BIT;
    conn.write(&Pdu::new(1, body))
        .await
        .map_err(|e| ConnectError::Protocol(e.to_string()))?;
    loop {
        let pdu = match conn.read().await {
            Ok(Some(p)) => p,
            Ok(None) => {
                return Err(ConnectError::Protocol(
                    "connection closed before the bind response".into(),
                ));
            }
            Err(e) => return Err(ConnectError::Protocol(e.to_string())),
        };
        if pdu.sequence == 1 && pdu.body.command_id() == want {
            if pdu.status != pdu::status::ESME_ROK {
                return Err(ConnectError::BindRejected { status: pdu.status });
            }
            return Ok(match pdu.body {
                Body::BindTransmitterResp { system_id }
                | Body::BindReceiverResp { system_id }
                | Body::BindTransceiverResp { system_id } => system_id,
                _ => String::new(),
            });
        }
        match pdu.body {
            Body::GenericNack if pdu.sequence == 1 => {
                return Err(ConnectError::BindRejected { status: pdu.status });
            }
            // An SMSC may probe before answering the bind.
            Body::EnquireLink => {
                conn.write(&Pdu::new(pdu.sequence, Body::EnquireLinkResp))
                    .await
                    .map_err(|e| ConnectError::Protocol(e.to_string()))?;
            }
            _ => {}
        }
    }
}

/// The socket, boxed so TCP and TLS look the same.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix is impossible: the stream cannot be framed again.
    #[error("unframeable input: {0}")]
    Frame(PduError),
    /// A whole PDU with a readable header but a malformed body.
    #[error("malformed PDU: {error}")]
    Body {
        header: Option<Header>,
        error: PduError,
    },
}

/// Frames PDUs off a byte stream (mini-redis `connection.rs`).
struct Connection {
    stream: Box<dyn Stream>,
    buf: Vec<u8>,
}

impl Connection {
    fn new(stream: Box<dyn Stream>) -> Self {
        Self {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    /// The next PDU; `None` on a clean close between PDUs. Cancel-safe: the
    /// only await is a `read`, and bytes are buffered before parsing.
    async fn read(&mut self) -> Result<Option<Pdu>, ReadError> {
        loop {
            if let Some(n) = pdu::frame_len(&self.buf).map_err(ReadError::Frame)? {
                let frame: Vec<u8> = self.buf.drain(..n).collect();
                return match Pdu::decode(&frame) {
                    Ok(p) => Ok(Some(p)),
                    Err(error) => Err(ReadError::Body {
                        header: Header::parse(&frame).ok(),
                        error,
                    }),
                };
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()))
                };
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn write(&mut self, pdu: &Pdu) -> std::io::Result<()> {
        let bytes = pdu
            .encode()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        self.stream.write_all(&bytes).await?;
        self.stream.flush().await
    }
}

type Reply = oneshot::Sender<Result<Pdu, SessionError>>;

/// Owns the connection after the bind; see the module docs.
struct Driver {
    conn: Connection,
    rx: mpsc::Receiver<Outbound>,
    /// For `deliver_sm_resp`s produced by handler tasks; weak so that the
    /// driver ends when the last `Session` handle is dropped.
    responses: mpsc::WeakSender<Outbound>,
    handler: Arc<dyn DeliverHandler>,
    pending: HashMap<u32, (Instant, Reply)>,
    next_seq: u32,
    /// The outstanding `enquire_link`: sequence number and when it was sent.
    enquire: Option<(u32, Instant)>,
    /// Our `unbind`: sequence number, when, and who waits for it.
    unbinding: Option<(u32, Instant, oneshot::Sender<()>)>,
    last_read: Instant,
    cfg: SessionConfig,
    /// Where the driver leaves why it ended, before failing the callers.
    reason: Arc<Mutex<Option<String>>>,
}

impl Driver {
    /// Runs until the connection ends, leaving why in `reason`.
    async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let why = loop {
            tokio::select! {
                r = self.conn.read() => match r {
                    Ok(Some(pdu)) => {
                        self.last_read = Instant::now();
                        if let Some(why) = self.incoming(pdu).await {
                            break why;
                        }
                    }
                    Ok(None) => break "connection closed by the SMSC".to_owned(),
                    Err(ReadError::Body { header: Some(h), error }) => {
                        self.last_read = Instant::now();
                        if let Some(why) = self.malformed(h, &error).await {
                            break why;
                        }
                    }
                    Err(e) => break e.to_string(),
                },
                out = self.rx.recv() => match out {
                    Some(out) => {
                        if let Some(why) = self.outgoing(out).await {
                            break why;
                        }
                    }
                    None => break "session dropped".to_owned(),
                },
                _ = tick.tick() => {
                    if let Some(why) = self.housekeeping().await {
                        break why;
                    }
                }
            }
        };
        debug!(reason = %why, "SMPP session ended");
        *self.reason.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
        // Dropping the reply senders answers every waiting caller with
        // `Closed` (the reason is already readable); the session marks itself
        // closed after this returns.
        self.pending.clear();
        if let Some((_, _, done)) = self.unbinding.take() {
            let _ = done.send(());
        }
        let _ = self.conn.stream.shutdown().await;
    }

    fn next_sequence(&mut self) -> u32 {
        let s = self.next_seq;
        self.next_seq = if s >= MAX_SEQUENCE { 1 } else { s + 1 };
        s
    }

    async fn send(&mut self, pdu: &Pdu) -> Option<String> {
        match self.conn.write(pdu).await {
            Ok(()) => None,
            Err(e) => Some(format!("write failed: {e}")),
        }
    }

    async fn outgoing(&mut self, out: Outbound) -> Option<String> {
        match out {
            Outbound::Request { body, reply } => {
                let seq = self.next_sequence();
                let pdu = Pdu::new(seq, body);
                if let Err(e) = pdu.encode() {
                    let _ = reply.send(Err(SessionError::Encode(e)));
                    return None;
                }
                // Registered before the write, so a fast response finds it.
                self.pending.insert(seq, (Instant::now(), reply));
                self.send(&pdu).await
            }
            Outbound::Response(pdu) => self.send(&pdu).await,
            Outbound::Unbind(done) => {
                let seq = self.next_sequence();
                self.unbinding = Some((seq, Instant::now(), done));
                self.send(&Pdu::new(seq, Body::Unbind)).await
            }
        }
    }

    async fn incoming(&mut self, pdu: Pdu) -> Option<String> {
        if pdu.body.is_response() {
            let seq = pdu.sequence;
            if let Some((_, reply)) = self.pending.remove(&seq) {
                let _ = reply.send(Ok(pdu));
            } else if matches!(pdu.body, Body::EnquireLinkResp)
                && self.enquire.is_some_and(|(s, _)| s == seq)
            {
                self.enquire = None;
            } else if matches!(pdu.body, Body::UnbindResp | Body::GenericNack)
                && self.unbinding.as_ref().is_some_and(|(s, _, _)| *s == seq)
            {
                return Some("unbound".to_owned());
            } else {
                // A response after its caller timed out: nothing waits.
                debug!(
                    sequence = seq,
                    command = pdu.body.command_id(),
                    "late or unknown response"
                );
            }
            return None;
        }
        match pdu.body {
            Body::EnquireLink => {
                self.send(&Pdu::new(pdu.sequence, Body::EnquireLinkResp))
                    .await
            }
            Body::Unbind => {
                // §4.2: answer, then the SMSC closes.
                let _ = self.send(&Pdu::new(pdu.sequence, Body::UnbindResp)).await;
                Some("unbound by the SMSC".to_owned())
            }
            Body::DeliverSm(sm) => {
                // The handler may write to the store: run it beside the
                // driver, which must keep reading and answering meanwhile.
                // The response goes out whatever the handler decides (§4.6.2).
                let handler = self.handler.clone();
                let responses = self.responses.clone();
                let seq = pdu.sequence;
                tokio::spawn(async move {
                    let status = handler.on_deliver_sm(sm).await;
                    if let Some(tx) = responses.upgrade() {
                        let resp = Pdu::with_status(
                            seq,
                            status,
                            Body::DeliverSmResp {
                                message_id: String::new(),
                            },
                        );
                        let _ = tx.send(Outbound::Response(resp)).await;
                    }
                });
                None
            }
            // §4.12: alert_notification has no response.
            Body::Other {
                command_id: 0x0000_0102,
                ..
            } => None,
            other => {
                // Anything else an ESME does not serve: §4.3 generic_nack.
                debug!(command = other.command_id(), "unsupported request");
                self.send(&Pdu::with_status(
                    pdu.sequence,
                    pdu::status::ESME_RINVCMDID,
                    Body::GenericNack,
                ))
                .await
            }
        }
    }

    /// A PDU whose header is fine but whose body is not: answer a request
    /// with `generic_nack` (§2.9), fail a response's caller.
    async fn malformed(&mut self, h: Header, error: &PduError) -> Option<String> {
        warn!(command = h.command_id, %error, "malformed PDU from the SMSC");
        if h.command_id & command::RESPONSE_BIT != 0 {
            if let Some((_, reply)) = self.pending.remove(&h.sequence_number) {
                let _ = reply.send(Err(SessionError::Closed(format!(
                    "malformed response: {error}"
                ))));
            }
            None
        } else {
            self.send(&Pdu::with_status(
                h.sequence_number,
                pdu::status::ESME_RINVCMDLEN,
                Body::GenericNack,
            ))
            .await
        }
    }

    async fn housekeeping(&mut self) -> Option<String> {
        let now = Instant::now();
        let limit = self.cfg.request_timeout;
        // Callers gave up at `limit`; forget their entries a little later.
        self.pending
            .retain(|_, (sent, _)| now.duration_since(*sent) < limit + Duration::from_secs(1));
        if let Some((_, sent)) = self.enquire {
            if now.duration_since(sent) >= limit {
                return Some(format!(
                    "no enquire_link_resp within {} ms",
                    limit.as_millis()
                ));
            }
        } else if now.duration_since(self.last_read) >= self.cfg.enquire_link {
            let seq = self.next_sequence();
            self.enquire = Some((seq, now));
            if let Some(why) = self.send(&Pdu::new(seq, Body::EnquireLink)).await {
                return Some(why);
            }
        }
        if let Some((_, sent, _)) = &self.unbinding
            && now.duration_since(*sent) >= Duration::from_secs(2)
        {
            return Some("unbound (no unbind_resp)".to_owned());
        }
        None
    }
}
