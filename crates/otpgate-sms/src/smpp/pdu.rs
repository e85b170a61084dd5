//! The SMPP 3.4 PDU codec: framing (§3.2 header), the bodies otpgate sends
//! and receives (§4.1 binds, §4.2 unbind, §4.3 generic_nack, §4.4 submit_sm,
//! §4.6 deliver_sm, §4.11 enquire_link) and optional parameters (§5.3 TLVs).
//!
//! Everything here is pure: bytes in, values out. Decoding never panics and
//! never trusts a length it has not checked against what is actually there;
//! a malformed PDU from an SMSC is a [`PduError`], which the session answers
//! with `generic_nack` or by dropping the connection (§2.9).

use std::fmt;

/// `command_length` + `command_id` + `command_status` + `sequence_number` (§3.2).
pub const HEADER_LEN: usize = 16;

/// Largest PDU accepted from a peer. SMPP 3.4 sets no limit, but a submit or
/// deliver with every field at its maximum plus a 64 KiB `message_payload`
/// stays below this; anything bigger is a broken or hostile peer.
pub const MAX_PDU_LEN: usize = 70 * 1024;

/// Sequence numbers run 1..=0x7FFFFFFF and then wrap (§3.2, "sequence_number").
pub const MAX_SEQUENCE: u32 = 0x7FFF_FFFF;

/// SMPP version we bind as (§5.2.4: 0x34 for 3.4).
pub const INTERFACE_VERSION: u8 = 0x34;

/// Command ids (§5.1.2). Responses have bit 31 set.
pub mod command {
    pub const GENERIC_NACK: u32 = 0x8000_0000;
    pub const BIND_RECEIVER: u32 = 0x0000_0001;
    pub const BIND_RECEIVER_RESP: u32 = 0x8000_0001;
    pub const BIND_TRANSMITTER: u32 = 0x0000_0002;
    pub const BIND_TRANSMITTER_RESP: u32 = 0x8000_0002;
    pub const SUBMIT_SM: u32 = 0x0000_0004;
    pub const SUBMIT_SM_RESP: u32 = 0x8000_0004;
    pub const DELIVER_SM: u32 = 0x0000_0005;
    pub const DELIVER_SM_RESP: u32 = 0x8000_0005;
    pub const UNBIND: u32 = 0x0000_0006;
    pub const UNBIND_RESP: u32 = 0x8000_0006;
    pub const BIND_TRANSCEIVER: u32 = 0x0000_0009;
    pub const BIND_TRANSCEIVER_RESP: u32 = 0x8000_0009;
    pub const ENQUIRE_LINK: u32 = 0x0000_0015;
    pub const ENQUIRE_LINK_RESP: u32 = 0x8000_0015;
    /// Bit 31 marks a response (§5.1.2.1).
    pub const RESPONSE_BIT: u32 = 0x8000_0000;
}

/// `command_status` values (§5.1.3) otpgate looks at.
pub mod status {
    pub const ESME_ROK: u32 = 0x0000_0000;
    pub const ESME_RINVMSGLEN: u32 = 0x0000_0001;
    pub const ESME_RINVCMDLEN: u32 = 0x0000_0002;
    pub const ESME_RINVCMDID: u32 = 0x0000_0003;
    pub const ESME_RINVBNDSTS: u32 = 0x0000_0004;
    pub const ESME_RALYBND: u32 = 0x0000_0005;
    pub const ESME_RINVPRTFLG: u32 = 0x0000_0006;
    pub const ESME_RINVREGDLVFLG: u32 = 0x0000_0007;
    pub const ESME_RSYSERR: u32 = 0x0000_0008;
    pub const ESME_RINVSRCADR: u32 = 0x0000_000A;
    pub const ESME_RINVDSTADR: u32 = 0x0000_000B;
    pub const ESME_RINVMSGID: u32 = 0x0000_000C;
    pub const ESME_RBINDFAIL: u32 = 0x0000_000D;
    pub const ESME_RINVPASWD: u32 = 0x0000_000E;
    pub const ESME_RINVSYSID: u32 = 0x0000_000F;
    pub const ESME_RMSGQFUL: u32 = 0x0000_0014;
    pub const ESME_RINVSERTYP: u32 = 0x0000_0015;
    pub const ESME_RINVESMCLASS: u32 = 0x0000_0043;
    pub const ESME_RSUBMITFAIL: u32 = 0x0000_0045;
    pub const ESME_RINVSRCTON: u32 = 0x0000_0048;
    pub const ESME_RINVSRCNPI: u32 = 0x0000_0049;
    pub const ESME_RINVDSTTON: u32 = 0x0000_0050;
    pub const ESME_RINVDSTNPI: u32 = 0x0000_0051;
    pub const ESME_RINVSYSTYP: u32 = 0x0000_0053;
    pub const ESME_RTHROTTLED: u32 = 0x0000_0058;
    pub const ESME_RINVSCHED: u32 = 0x0000_0061;
    pub const ESME_RINVEXPIRY: u32 = 0x0000_0062;
    pub const ESME_RINVDFTMSGID: u32 = 0x0000_0063;
    pub const ESME_RX_T_APPN: u32 = 0x0000_0064;
    pub const ESME_RX_P_APPN: u32 = 0x0000_0065;
    pub const ESME_RX_R_APPN: u32 = 0x0000_0066;
    pub const ESME_RINVOPTPARSTREAM: u32 = 0x0000_00C0;
    pub const ESME_ROPTPARNOTALLWD: u32 = 0x0000_00C1;
    pub const ESME_RINVPARLEN: u32 = 0x0000_00C2;
    pub const ESME_RMISSINGOPTPARAM: u32 = 0x0000_00C3;
    pub const ESME_RINVOPTPARAMVAL: u32 = 0x0000_00C4;
    pub const ESME_RDELIVERYFAILURE: u32 = 0x0000_00FE;
    pub const ESME_RUNKNOWNERR: u32 = 0x0000_00FF;

    /// The spec's name for a status, for logs and error texts.
    pub fn name(status: u32) -> &'static str {
        match status {
            ESME_ROK => "ESME_ROK",
            ESME_RINVMSGLEN => "ESME_RINVMSGLEN",
            ESME_RINVCMDLEN => "ESME_RINVCMDLEN",
            ESME_RINVCMDID => "ESME_RINVCMDID",
            ESME_RINVBNDSTS => "ESME_RINVBNDSTS",
            ESME_RALYBND => "ESME_RALYBND",
            ESME_RINVPRTFLG => "ESME_RINVPRTFLG",
            ESME_RINVREGDLVFLG => "ESME_RINVREGDLVFLG",
            ESME_RSYSERR => "ESME_RSYSERR",
            ESME_RINVSRCADR => "ESME_RINVSRCADR",
            ESME_RINVDSTADR => "ESME_RINVDSTADR",
            ESME_RINVMSGID => "ESME_RINVMSGID",
            ESME_RBINDFAIL => "ESME_RBINDFAIL",
            ESME_RINVPASWD => "ESME_RINVPASWD",
            ESME_RINVSYSID => "ESME_RINVSYSID",
            ESME_RMSGQFUL => "ESME_RMSGQFUL",
            ESME_RINVSERTYP => "ESME_RINVSERTYP",
            ESME_RINVESMCLASS => "ESME_RINVESMCLASS",
            ESME_RSUBMITFAIL => "ESME_RSUBMITFAIL",
            ESME_RINVSRCTON => "ESME_RINVSRCTON",
            ESME_RINVSRCNPI => "ESME_RINVSRCNPI",
            ESME_RINVDSTTON => "ESME_RINVDSTTON",
            ESME_RINVDSTNPI => "ESME_RINVDSTNPI",
            ESME_RINVSYSTYP => "ESME_RINVSYSTYP",
            ESME_RTHROTTLED => "ESME_RTHROTTLED",
            ESME_RINVSCHED => "ESME_RINVSCHED",
            ESME_RINVEXPIRY => "ESME_RINVEXPIRY",
            ESME_RINVDFTMSGID => "ESME_RINVDFTMSGID",
            ESME_RX_T_APPN => "ESME_RX_T_APPN",
            ESME_RX_P_APPN => "ESME_RX_P_APPN",
            ESME_RX_R_APPN => "ESME_RX_R_APPN",
            ESME_RINVOPTPARSTREAM => "ESME_RINVOPTPARSTREAM",
            ESME_ROPTPARNOTALLWD => "ESME_ROPTPARNOTALLWD",
            ESME_RINVPARLEN => "ESME_RINVPARLEN",
            ESME_RMISSINGOPTPARAM => "ESME_RMISSINGOPTPARAM",
            ESME_RINVOPTPARAMVAL => "ESME_RINVOPTPARAMVAL",
            ESME_RDELIVERYFAILURE => "ESME_RDELIVERYFAILURE",
            ESME_RUNKNOWNERR => "ESME_RUNKNOWNERR",
            _ => "vendor or reserved status",
        }
    }
}

/// TLV tags (§5.3.2) otpgate reads.
pub mod tag {
    pub const RECEIPTED_MESSAGE_ID: u16 = 0x001E;
    pub const MESSAGE_STATE: u16 = 0x0427;
    pub const NETWORK_ERROR_CODE: u16 = 0x0423;
    pub const SC_INTERFACE_VERSION: u16 = 0x0210;
    pub const MESSAGE_PAYLOAD: u16 = 0x0424;
}

/// Why bytes are not a valid PDU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    /// `command_length` below the header size or above [`MAX_PDU_LEN`]: the
    /// stream cannot be framed any more, the connection has to go (§2.9).
    #[error("command_length {0} is out of range")]
    BadLength(u32),
    /// The body ends before a field it must hold.
    #[error("{0} is truncated")]
    Truncated(&'static str),
    /// A C-Octet string without its terminating NUL within its maximum size.
    #[error("{0} is not a NUL-terminated string of at most {1} octets")]
    BadString(&'static str, usize),
    /// A value otpgate was asked to encode does not fit its field.
    #[error("{0} is longer than SMPP 3.4 allows ({1} octets)")]
    TooLong(&'static str, usize),
}

/// One optional parameter (§3.2.4.1): tag, length, value.
#[derive(Clone, PartialEq, Eq)]
pub struct Tlv {
    pub tag: u16,
    pub value: Vec<u8>,
}

impl fmt::Debug for Tlv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may carry message text (message_payload): lengths only.
        write!(f, "Tlv({:#06x}, {} octets)", self.tag, self.value.len())
    }
}

/// The body of `bind_transmitter`, `bind_receiver` and `bind_transceiver`
/// (§4.1.1, §4.1.3, §4.1.5).
#[derive(Clone, PartialEq, Eq)]
pub struct Bind {
    pub system_id: String,
    pub password: String,
    pub system_type: String,
    pub interface_version: u8,
    pub addr_ton: u8,
    pub addr_npi: u8,
    pub address_range: String,
}

impl fmt::Debug for Bind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bind")
            .field("system_id", &self.system_id)
            .field("password", &"***")
            .field("system_type", &self.system_type)
            .finish_non_exhaustive()
    }
}

/// The body shared by `submit_sm` (§4.4.1) and `deliver_sm` (§4.6.1).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ShortMessage {
    pub service_type: String,
    pub source_addr_ton: u8,
    pub source_addr_npi: u8,
    pub source_addr: String,
    pub dest_addr_ton: u8,
    pub dest_addr_npi: u8,
    pub destination_addr: String,
    pub esm_class: u8,
    pub protocol_id: u8,
    pub priority_flag: u8,
    pub schedule_delivery_time: String,
    pub validity_period: String,
    pub registered_delivery: u8,
    pub replace_if_present_flag: u8,
    pub data_coding: u8,
    pub sm_default_msg_id: u8,
    /// At most 254 octets (`sm_length` is one octet, §4.4.1).
    pub short_message: Vec<u8>,
    pub tlvs: Vec<Tlv>,
}

impl ShortMessage {
    /// The first TLV with this tag.
    pub fn tlv(&self, tag: u16) -> Option<&[u8]> {
        self.tlvs
            .iter()
            .find(|t| t.tag == tag)
            .map(|t| t.value.as_slice())
    }
}

impl fmt::Debug for ShortMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The text holds an OTP and the addresses are phone numbers: neither
        // belongs in a log line.
        f.debug_struct("ShortMessage")
            .field("esm_class", &self.esm_class)
            .field("data_coding", &self.data_coding)
            .field("sm_length", &self.short_message.len())
            .field("tlvs", &self.tlvs)
            .finish_non_exhaustive()
    }
}

/// The PDU bodies otpgate knows; anything else is kept as raw octets so the
/// session can still answer it (`generic_nack`, §4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    BindTransmitter(Bind),
    BindReceiver(Bind),
    BindTransceiver(Bind),
    /// `system_id` of the SMSC (§4.1.2); empty when the bind failed and the
    /// SMSC sent no body.
    BindTransmitterResp {
        system_id: String,
    },
    BindReceiverResp {
        system_id: String,
    },
    BindTransceiverResp {
        system_id: String,
    },
    SubmitSm(ShortMessage),
    /// `message_id` (§4.4.2); absent on error responses.
    SubmitSmResp {
        message_id: String,
    },
    DeliverSm(ShortMessage),
    DeliverSmResp {
        message_id: String,
    },
    Unbind,
    UnbindResp,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    Other {
        command_id: u32,
        body: Vec<u8>,
    },
}

impl Body {
    pub fn command_id(&self) -> u32 {
        use command::*;
        match self {
            Body::BindTransmitter(_) => BIND_TRANSMITTER,
            Body::BindReceiver(_) => BIND_RECEIVER,
            Body::BindTransceiver(_) => BIND_TRANSCEIVER,
            Body::BindTransmitterResp { .. } => BIND_TRANSMITTER_RESP,
            Body::BindReceiverResp { .. } => BIND_RECEIVER_RESP,
            Body::BindTransceiverResp { .. } => BIND_TRANSCEIVER_RESP,
            Body::SubmitSm(_) => SUBMIT_SM,
            Body::SubmitSmResp { .. } => SUBMIT_SM_RESP,
            Body::DeliverSm(_) => DELIVER_SM,
            Body::DeliverSmResp { .. } => DELIVER_SM_RESP,
            Body::Unbind => UNBIND,
            Body::UnbindResp => UNBIND_RESP,
            Body::EnquireLink => ENQUIRE_LINK,
            Body::EnquireLinkResp => ENQUIRE_LINK_RESP,
            Body::GenericNack => GENERIC_NACK,
            Body::Other { command_id, .. } => *command_id,
        }
    }

    pub fn is_response(&self) -> bool {
        self.command_id() & command::RESPONSE_BIT != 0
    }
}

/// A whole PDU: header fields plus body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    pub status: u32,
    pub sequence: u32,
    pub body: Body,
}

impl Pdu {
    pub fn new(sequence: u32, body: Body) -> Self {
        Self {
            status: status::ESME_ROK,
            sequence,
            body,
        }
    }

    pub fn with_status(sequence: u32, status: u32, body: Body) -> Self {
        Self {
            status,
            sequence,
            body,
        }
    }

    /// Encodes the PDU, `command_length` included.
    ///
    /// # Errors
    /// [`PduError::TooLong`] when a field does not fit its SMPP 3.4 maximum.
    pub fn encode(&self) -> Result<Vec<u8>, PduError> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&[0; 4]); // command_length, patched below
        out.extend_from_slice(&self.body.command_id().to_be_bytes());
        out.extend_from_slice(&self.status.to_be_bytes());
        out.extend_from_slice(&self.sequence.to_be_bytes());
        match &self.body {
            Body::BindTransmitter(b) | Body::BindReceiver(b) | Body::BindTransceiver(b) => {
                // Field maxima from §4.1.1 (sizes include the NUL).
                put_cstr(&mut out, "system_id", &b.system_id, 16)?;
                put_cstr(&mut out, "password", &b.password, 9)?;
                put_cstr(&mut out, "system_type", &b.system_type, 13)?;
                out.push(b.interface_version);
                out.push(b.addr_ton);
                out.push(b.addr_npi);
                put_cstr(&mut out, "address_range", &b.address_range, 41)?;
            }
            Body::BindTransmitterResp { system_id }
            | Body::BindReceiverResp { system_id }
            | Body::BindTransceiverResp { system_id } => {
                put_cstr(&mut out, "system_id", system_id, 16)?;
            }
            Body::SubmitSm(sm) | Body::DeliverSm(sm) => put_sm(&mut out, sm)?,
            Body::SubmitSmResp { message_id } | Body::DeliverSmResp { message_id } => {
                put_cstr(&mut out, "message_id", message_id, 65)?;
            }
            Body::Unbind
            | Body::UnbindResp
            | Body::EnquireLink
            | Body::EnquireLinkResp
            | Body::GenericNack => {}
            Body::Other { body, .. } => out.extend_from_slice(body),
        }
        if out.len() > MAX_PDU_LEN {
            return Err(PduError::TooLong("PDU", MAX_PDU_LEN));
        }
        let len = u32::try_from(out.len()).map_err(|_| PduError::TooLong("PDU", MAX_PDU_LEN))?;
        out[..4].copy_from_slice(&len.to_be_bytes());
        Ok(out)
    }

    /// Decodes one whole PDU (as framed by [`frame_len`]).
    ///
    /// # Errors
    /// [`PduError`] when the header or the body is malformed.
    pub fn decode(frame: &[u8]) -> Result<Pdu, PduError> {
        let header = Header::parse(frame)?;
        let len = header.command_length as usize;
        if frame.len() < len {
            return Err(PduError::Truncated("PDU"));
        }
        let mut r = Reader::new(&frame[HEADER_LEN..len]);
        use command::*;
        let body = match header.command_id {
            BIND_TRANSMITTER => Body::BindTransmitter(get_bind(&mut r)?),
            BIND_RECEIVER => Body::BindReceiver(get_bind(&mut r)?),
            BIND_TRANSCEIVER => Body::BindTransceiver(get_bind(&mut r)?),
            BIND_TRANSMITTER_RESP => Body::BindTransmitterResp {
                system_id: r.opt_cstr("system_id", 16)?,
            },
            BIND_RECEIVER_RESP => Body::BindReceiverResp {
                system_id: r.opt_cstr("system_id", 16)?,
            },
            BIND_TRANSCEIVER_RESP => Body::BindTransceiverResp {
                system_id: r.opt_cstr("system_id", 16)?,
            },
            SUBMIT_SM => Body::SubmitSm(get_sm(&mut r)?),
            DELIVER_SM => Body::DeliverSm(get_sm(&mut r)?),
            // §4.4.2: "The submit_sm_resp PDU Body is not returned if the
            // command_status field contains a non-zero value", so an empty
            // body reads as an empty id. Real SMSCs send ids longer than the
            // 65 octets the spec allows; accept what is NUL-terminated.
            SUBMIT_SM_RESP => Body::SubmitSmResp {
                message_id: r.opt_cstr("message_id", MAX_PDU_LEN)?,
            },
            DELIVER_SM_RESP => Body::DeliverSmResp {
                message_id: r.opt_cstr("message_id", MAX_PDU_LEN)?,
            },
            UNBIND => Body::Unbind,
            UNBIND_RESP => Body::UnbindResp,
            ENQUIRE_LINK => Body::EnquireLink,
            ENQUIRE_LINK_RESP => Body::EnquireLinkResp,
            GENERIC_NACK => Body::GenericNack,
            other => Body::Other {
                command_id: other,
                body: r.rest().to_vec(),
            },
        };
        Ok(Pdu {
            status: header.command_status,
            sequence: header.sequence_number,
            body,
        })
    }
}

/// The four header fields (§3.2), readable even when the body is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub command_length: u32,
    pub command_id: u32,
    pub command_status: u32,
    pub sequence_number: u32,
}

impl Header {
    /// # Errors
    /// [`PduError::Truncated`] with fewer than 16 octets,
    /// [`PduError::BadLength`] for an impossible `command_length`.
    pub fn parse(buf: &[u8]) -> Result<Header, PduError> {
        let mut r = Reader::new(buf);
        let command_length = r.u32("header")?;
        let command_id = r.u32("header")?;
        let command_status = r.u32("header")?;
        let sequence_number = r.u32("header")?;
        let len = command_length as usize;
        if !(HEADER_LEN..=MAX_PDU_LEN).contains(&len) {
            return Err(PduError::BadLength(command_length));
        }
        Ok(Header {
            command_length,
            command_id,
            command_status,
            sequence_number,
        })
    }
}

/// How many octets the PDU at the start of `buf` spans, `None` while fewer
/// than its `command_length` have arrived.
///
/// # Errors
/// [`PduError::BadLength`]: the stream can no longer be framed.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, PduError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let n = len as usize;
    if !(HEADER_LEN..=MAX_PDU_LEN).contains(&n) {
        return Err(PduError::BadLength(len));
    }
    Ok((buf.len() >= n).then_some(n))
}

fn put_cstr(out: &mut Vec<u8>, field: &'static str, s: &str, max: usize) -> Result<(), PduError> {
    // `max` counts the terminating NUL, as the spec's size column does.
    if s.len() >= max || s.as_bytes().contains(&0) {
        return Err(PduError::TooLong(field, max - 1));
    }
    out.extend_from_slice(s.as_bytes());
    out.push(0);
    Ok(())
}

fn put_sm(out: &mut Vec<u8>, sm: &ShortMessage) -> Result<(), PduError> {
    // Field order and maxima: §4.4.1 (submit_sm) = §4.6.1 (deliver_sm).
    put_cstr(out, "service_type", &sm.service_type, 6)?;
    out.push(sm.source_addr_ton);
    out.push(sm.source_addr_npi);
    put_cstr(out, "source_addr", &sm.source_addr, 21)?;
    out.push(sm.dest_addr_ton);
    out.push(sm.dest_addr_npi);
    put_cstr(out, "destination_addr", &sm.destination_addr, 21)?;
    out.push(sm.esm_class);
    out.push(sm.protocol_id);
    out.push(sm.priority_flag);
    put_cstr(
        out,
        "schedule_delivery_time",
        &sm.schedule_delivery_time,
        17,
    )?;
    put_cstr(out, "validity_period", &sm.validity_period, 17)?;
    out.push(sm.registered_delivery);
    out.push(sm.replace_if_present_flag);
    out.push(sm.data_coding);
    out.push(sm.sm_default_msg_id);
    let sm_length = u8::try_from(sm.short_message.len())
        .ok()
        .filter(|n| *n <= 254)
        .ok_or(PduError::TooLong("short_message", 254))?;
    out.push(sm_length);
    out.extend_from_slice(&sm.short_message);
    for t in &sm.tlvs {
        let len = u16::try_from(t.value.len()).map_err(|_| PduError::TooLong("TLV", 65535))?;
        out.extend_from_slice(&t.tag.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&t.value);
    }
    Ok(())
}

fn get_bind(r: &mut Reader<'_>) -> Result<Bind, PduError> {
    Ok(Bind {
        system_id: r.cstr("system_id", 16)?,
        password: r.cstr("password", 9)?,
        system_type: r.cstr("system_type", 13)?,
        interface_version: r.u8("interface_version")?,
        addr_ton: r.u8("addr_ton")?,
        addr_npi: r.u8("addr_npi")?,
        address_range: r.cstr("address_range", 41)?,
    })
}

fn get_sm(r: &mut Reader<'_>) -> Result<ShortMessage, PduError> {
    // Lenient maxima on decode: SMSCs overrun the spec's sizes in the wild
    // (long source_addr on receipts); what matters is the NUL being there.
    let lax = 256;
    let mut sm = ShortMessage {
        service_type: r.cstr("service_type", lax)?,
        source_addr_ton: r.u8("source_addr_ton")?,
        source_addr_npi: r.u8("source_addr_npi")?,
        source_addr: r.cstr("source_addr", lax)?,
        dest_addr_ton: r.u8("dest_addr_ton")?,
        dest_addr_npi: r.u8("dest_addr_npi")?,
        destination_addr: r.cstr("destination_addr", lax)?,
        esm_class: r.u8("esm_class")?,
        protocol_id: r.u8("protocol_id")?,
        priority_flag: r.u8("priority_flag")?,
        schedule_delivery_time: r.cstr("schedule_delivery_time", lax)?,
        validity_period: r.cstr("validity_period", lax)?,
        registered_delivery: r.u8("registered_delivery")?,
        replace_if_present_flag: r.u8("replace_if_present_flag")?,
        data_coding: r.u8("data_coding")?,
        sm_default_msg_id: r.u8("sm_default_msg_id")?,
        short_message: Vec::new(),
        tlvs: Vec::new(),
    };
    let sm_length = usize::from(r.u8("sm_length")?);
    sm.short_message = r.take("short_message", sm_length)?.to_vec();
    sm.tlvs = get_tlvs(r)?;
    Ok(sm)
}

fn get_tlvs(r: &mut Reader<'_>) -> Result<Vec<Tlv>, PduError> {
    let mut tlvs = Vec::new();
    while !r.rest().is_empty() {
        let tag = r.u16("TLV tag")?;
        let len = usize::from(r.u16("TLV length")?);
        let value = r.take("TLV value", len)?.to_vec();
        tlvs.push(Tlv { tag, value });
    }
    Ok(tlvs)
}

/// A bounds-checked cursor: every read says what it was reading when the
/// bytes ran out.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn rest(&self) -> &'a [u8] {
        self.buf
    }

    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], PduError> {
        if self.buf.len() < n {
            return Err(PduError::Truncated(field));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, PduError> {
        Ok(self.take(field, 1)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, PduError> {
        let b = self.take(field, 2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, PduError> {
        let b = self.take(field, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A C-Octet string of at most `max` octets including its NUL (§3.1).
    fn cstr(&mut self, field: &'static str, max: usize) -> Result<String, PduError> {
        let window = &self.buf[..self.buf.len().min(max)];
        let Some(nul) = window.iter().position(|b| *b == 0) else {
            return Err(if self.buf.len() < max {
                PduError::Truncated(field)
            } else {
                PduError::BadString(field, max)
            });
        };
        let s = String::from_utf8_lossy(&window[..nul]).into_owned();
        self.buf = &self.buf[nul + 1..];
        Ok(s)
    }

    /// Like [`Reader::cstr`], but an absent field (no octets left) is empty.
    fn opt_cstr(&mut self, field: &'static str, max: usize) -> Result<String, PduError> {
        if self.buf.is_empty() {
            return Ok(String::new());
        }
        self.cstr(field, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_sm() -> ShortMessage {
        ShortMessage {
            source_addr_ton: 5,
            source_addr: "OTPGATE".into(),
            dest_addr_ton: 1,
            dest_addr_npi: 1,
            destination_addr: "919876543210".into(),
            registered_delivery: 1,
            data_coding: 8,
            short_message: vec![0x04, 0x1A, 0x04, 0x3E],
            tlvs: vec![Tlv {
                tag: tag::MESSAGE_STATE,
                value: vec![2],
            }],
            ..ShortMessage::default()
        }
    }

    #[test]
    fn submit_sm_round_trips_with_tlvs() {
        let pdu = Pdu::new(7, Body::SubmitSm(sample_sm()));
        let bytes = pdu.encode().unwrap();
        assert_eq!(frame_len(&bytes).unwrap(), Some(bytes.len()));
        assert_eq!(Pdu::decode(&bytes).unwrap(), pdu);
    }

    #[test]
    fn bind_transceiver_has_the_spec_layout() {
        let pdu = Pdu::new(
            1,
            Body::BindTransceiver(Bind {
                system_id: "otp".into(),
                password: "pw".into(),
                system_type: String::new(),
                interface_version: INTERFACE_VERSION,
                addr_ton: 0,
                addr_npi: 0,
                address_range: String::new(),
            }),
        );
        let bytes = pdu.encode().unwrap();
        // §4.1.5: header, "otp\0", "pw\0", "\0", 0x34, 0, 0, "\0".
        let mut want = vec![0, 0, 0, 28, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1];
        want.extend_from_slice(b"otp\0pw\0\0\x34\0\0\0");
        assert_eq!(bytes, want);
    }

    #[test]
    fn error_submit_sm_resp_without_body_decodes() {
        let bytes = [0, 0, 0, 16, 0x80, 0, 0, 4, 0, 0, 0, 0x58, 0, 0, 0, 3];
        let pdu = Pdu::decode(&bytes).unwrap();
        assert_eq!(pdu.status, status::ESME_RTHROTTLED);
        assert_eq!(
            pdu.body,
            Body::SubmitSmResp {
                message_id: String::new()
            }
        );
    }

    #[test]
    fn too_long_fields_are_refused_on_encode() {
        let sm = ShortMessage {
            short_message: vec![b'a'; 255],
            ..ShortMessage::default()
        };
        assert_eq!(
            Pdu::new(1, Body::SubmitSm(sm)).encode(),
            Err(PduError::TooLong("short_message", 254))
        );
    }

    #[test]
    fn bad_lengths_are_errors_not_panics() {
        assert_eq!(frame_len(&[0, 0, 0, 3]), Err(PduError::BadLength(3)));
        assert_eq!(
            frame_len(&[0xff, 0xff, 0xff, 0xff]),
            Err(PduError::BadLength(u32::MAX))
        );
        assert_eq!(frame_len(&[0, 0]), Ok(None));
        // A deliver_sm whose sm_length overruns the body.
        let mut bytes = Pdu::new(2, Body::DeliverSm(sample_sm())).encode().unwrap();
        let sm_len_at = bytes.len() - 4 - 5 - 1; // before short_message and the TLV
        bytes[sm_len_at] = 200;
        assert!(Pdu::decode(&bytes).is_err());
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        // A cheap deterministic fuzz: every prefix and every one-byte
        // corruption of a valid deliver_sm.
        let good = Pdu::new(9, Body::DeliverSm(sample_sm())).encode().unwrap();
        for n in 0..good.len() {
            let _ = Pdu::decode(&good[..n]);
            let _ = frame_len(&good[..n]);
        }
        for i in 0..good.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                let _ = Pdu::decode(&b);
            }
        }
    }

    #[test]
    fn debug_hides_text_and_password() {
        let s = format!("{:?}", sample_sm());
        assert!(!s.contains("919876543210"));
        let b = Bind {
            system_id: "x".into(),
            password: "secret".into(),
            system_type: String::new(),
            interface_version: 0x34,
            addr_ton: 0,
            addr_npi: 0,
            address_range: String::new(),
        };
        assert!(!format!("{b:?}").contains("secret"));
    }
}
