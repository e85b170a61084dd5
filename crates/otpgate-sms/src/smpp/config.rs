//! `type = "smpp"`: the table of an SMSC channel, as the SMPP channel owns
//! it (checked and resolved by [`super::prepare`]).

use std::path::PathBuf;

use serde::Deserialize;

use crate::setup::channel_config;

/// How to bind (SMPP 3.4 §2.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindMode {
    /// One `bind_transceiver` carries submits and receipts.
    #[default]
    Transceiver,
    /// A `bind_transmitter` for submits plus a `bind_receiver` for receipts,
    /// for SMSCs that do not offer transceiver binds.
    #[serde(alias = "transmitter+receiver", alias = "tx+rx")]
    TransmitterReceiver,
}

channel_config! {
    /// `type = "smpp"`: an SMSC reached over SMPP 3.4.
    #[derive(Debug, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SmppConfig {
        /// SMSC host name or address.
        pub host: String,
        /// SMSC port; default 2775 (the IANA port for SMPP).
        #[serde(default = "defaults::smpp_port")]
        pub port: u16,
        /// Connect over TLS; the certificate is checked against the system's
        /// roots (plus `tls_ca_file`) and `tls_server_name` (default `host`).
        #[serde(default)]
        pub tls: bool,
        /// A PEM file with extra CA certificates to trust (a private SMSC CA).
        #[serde(default)]
        pub tls_ca_file: Option<PathBuf>,
        /// The name the SMSC's certificate must carry, when not `host`.
        #[serde(default)]
        pub tls_server_name: Option<String>,
        /// `system_id` of the bind, at most 15 characters.
        pub system_id: String,
        /// `system_type` of the bind (often empty; some SMSCs want e.g. "OTP").
        #[serde(default)]
        pub system_type: String,
        /// `transceiver` (default) or `transmitter_receiver`.
        #[serde(default)]
        pub bind: BindMode,
        /// Sender: an alphanumeric name (at most 11 characters), a short code or
        /// a number (`+4477…` or digits).
        pub source_addr: String,
        /// Sender TON; default detected from `source_addr`: alphanumeric → 5,
        /// `+` or 10+ digits → 1 (international), shorter digits → 0 (unknown).
        #[serde(default)]
        pub source_ton: Option<u8>,
        /// Sender NPI; default detected: alphanumeric → 0, digits → 1 (E.164).
        #[serde(default)]
        pub source_npi: Option<u8>,
        /// `service_type` of each `submit_sm` (usually empty).
        #[serde(default)]
        pub service_type: String,
        /// Outstanding `submit_sm` per bind before a send waits; default 10.
        #[serde(default = "defaults::window")]
        pub window: u32,
        /// Cap on `submit_sm` per second per bind (the SMSC's contracted TPS);
        /// none by default.
        #[serde(default)]
        pub max_per_second: Option<u32>,
        /// Send `enquire_link` after this long without traffic; default 30000.
        #[serde(default = "defaults::enquire_link_ms")]
        pub enquire_link_ms: u64,
        /// TCP connect + TLS + bind must finish within this; default 10000.
        #[serde(default = "defaults::connect_timeout_ms")]
        pub connect_timeout_ms: u64,
        /// How long a `submit_sm` waits for its `submit_sm_resp` (and for a
        /// window slot); past it the send is retried later. Default 10000.
        #[serde(default = "defaults::request_timeout_ms")]
        pub request_timeout_ms: u64,
        /// Reconnect delay after a failure, doubling up to `reconnect_max_ms`
        /// (with jitter); defaults 1000 and 30000.
        #[serde(default = "defaults::reconnect_min_ms")]
        pub reconnect_min_ms: u64,
        #[serde(default = "defaults::reconnect_max_ms")]
        pub reconnect_max_ms: u64,
        /// Ask for delivery receipts (`registered_delivery` = 1); default true.
        #[serde(default = "defaults::yes")]
        pub registered_delivery: bool,
    }
    secrets {
        /// Bind password, at most 8 characters.
        password / password_env,
    }
}

mod defaults {
    pub fn smpp_port() -> u16 {
        2775
    }
    pub fn window() -> u32 {
        10
    }
    pub fn enquire_link_ms() -> u64 {
        30_000
    }
    pub fn connect_timeout_ms() -> u64 {
        10_000
    }
    pub fn request_timeout_ms() -> u64 {
        10_000
    }
    pub fn reconnect_min_ms() -> u64 {
        1_000
    }
    pub fn reconnect_max_ms() -> u64 {
        30_000
    }
    pub fn yes() -> bool {
        true
    }
}
