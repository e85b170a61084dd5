//! The channel tables tests put into `otpgate.toml` (or parse into the
//! server's settings): one place for the SMPP channel every suite points at
//! the simulator, so its bind credentials and fast reconnects agree.

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
