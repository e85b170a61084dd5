//! The channel tables tests put into `otpgate.toml` (or parse into the
//! server's settings): one place for the SMPP channel every suite points at
//! the simulator, so its bind credentials and fast reconnects agree, and for
//! the Kannel and Twilio channels the SMS crate's and the server's tests point at their
//! stand-in gateways.

use crate::sim;

/// A `[channels.NAME]` table of `type = "smpp"` for the simulator on
/// `port` with its bind credentials, reconnecting fast; `extra` lines go
/// into the table.
pub fn smpp_channel(name: &str, port: u16, extra: &str) -> String {
    format!(
        r#"
[channels.{name}]
type = "smpp"
host = "127.0.0.1"
port = {port}
system_id = "{sid}"
password = "{pw}"
source_addr = "OTPGATE"
reconnect_min_ms = 100
{extra}
"#,
        sid = sim::SYSTEM_ID,
        pw = sim::PASSWORD,
    )
}

/// A `[channels.twilio]` table of the Twilio preset for a stand-in gateway
/// on `port` (account `AC123`, sender `+15005550006`); `extra` lines (its
/// auth token and receipt settings) go into the table.
pub fn twilio_channel(port: u16, extra: &str) -> String {
    let lines = format!("account_sid = \"AC123\"\nfrom = \"+15005550006\"\n{extra}");
    preset_channel("twilio", port, &lines)
}

/// A `[channels.kannel]` table of the Kannel preset for a stand-in gateway
/// on `port` (user `otp`, sender `OTPGATE`); `extra` lines (its password
/// and receipt settings) go into the table.
pub fn kannel_channel(port: u16, extra: &str) -> String {
    let lines = format!("username = \"otp\"\nfrom = \"OTPGATE\"\n{extra}");
    preset_channel("kannel", port, &lines)
}

/// A `[channels.PRESET]` table of `type = "http"` with that preset, sending
/// to `127.0.0.1:port`, with `lines` in it.
fn preset_channel(preset: &str, port: u16, lines: &str) -> String {
    format!(
        r#"
[channels.{preset}]
type = "http"
preset = "{preset}"
url = "http://127.0.0.1:{port}"
{lines}
"#
    )
}
