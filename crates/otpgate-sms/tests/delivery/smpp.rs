//! The SMPP channel on its own against the simulator: encoding, windowing,
//! rate caps, keepalives, drops and reconnects, binds and unbinds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use otpgate_core::PhoneNumber;
use otpgate_sms::receipt::{Receipt, ReceiptSink};
use otpgate_sms::smpp::SmppSettings;
use otpgate_sms::{Channel, ChannelError, Outgoing, SmppChannel};
use otpgate_store::StoreError;

use crate::common::Sim;

/// Receipts kept in memory, to look at what the channel parsed.
#[derive(Default)]
struct Collected(Mutex<Vec<(String, Receipt)>>);

#[async_trait]
impl ReceiptSink for Collected {
    async fn record(&self, channel: &str, r: &Receipt) -> Result<bool, StoreError> {
        self.0.lock().unwrap().push((channel.to_owned(), r.clone()));
        Ok(true)
    }
}

fn settings(port: u16) -> SmppSettings {
    let mut s = SmppSettings::new("127.0.0.1", port, "otpgate", "secret");
    s.reconnect_min = Duration::from_millis(100);
    s.reconnect_max = Duration::from_millis(300);
    s.request_timeout = Duration::from_secs(3);
    s.connect_timeout = Duration::from_secs(2);
    s
}

fn msg(n: i64, text: &str) -> Outgoing {
    crate::common::outgoing(n, n as u64 + 1, text)
}

async fn bound(settings: SmppSettings) -> (SmppChannel, Arc<Collected>) {
    let sink = Arc::new(Collected::default());
    let ch = SmppChannel::start("smsc", settings, sink.clone());
    assert!(
        ch.wait_bound(Duration::from_secs(5)).await,
        "never bound: {:?}",
        ch.health()
    );
    (ch, sink)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gsm_text_goes_as_data_coding_0_and_other_scripts_as_ucs2_intact() {
    let Some(sim) = Sim::start("gsm_and_ucs2", &[]) else {
        return;
    };
    let (ch, _) = bound(settings(sim.port())).await;
    let texts = [
        ("Your code is 1234. {Valid} 60 s, 5€ [x]", 0),
        ("Ваш код подтверждения: 1234", 8),
        ("आपका सत्यापन कोड 1234 है", 8),
    ];
    for (i, (text, _)) in texts.iter().enumerate() {
        let acc = ch.send(&msg(i as i64, text)).await.expect("accepted");
        assert!(acc.gateway_id.is_some_and(|id| !id.is_empty()));
    }
    let submits = sim.wait_count("submit", 3, Duration::from_secs(5)).await;
    assert_eq!(submits.len(), 3, "{submits:#?}");
    for ((text, dc), s) in texts.iter().zip(&submits) {
        assert_eq!(s["text"], *text, "text arrives intact");
        assert_eq!(s["data_coding"], *dc);
        assert_eq!(s["destination_addr"], "919876543210");
        assert_eq!(
            (s["dest_addr_ton"].as_u64(), s["dest_addr_npi"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(s["source_addr"], "OTPGATE");
        assert_eq!(
            (s["source_addr_ton"].as_u64(), s["source_addr_npi"].as_u64()),
            (Some(5), Some(0))
        );
        assert_eq!(s["registered_delivery"], 1);
    }
    let bind = &sim.wait_count("bind", 1, Duration::from_secs(5)).await[0];
    assert_eq!(bind["mode"], "transceiver");
    assert_eq!(bind["interface_version"], 0x34, "binds as SMPP 3.4");
    ch.close().await;
    sim.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_longer_than_one_sms_is_refused_permanently_without_submitting() {
    let Some(sim) = Sim::start("long_text", &[]) else {
        return;
    };
    let (ch, _) = bound(settings(sim.port())).await;
    let err = ch.send(&msg(1, &"1234 ".repeat(40))).await.unwrap_err();
    assert!(
        matches!(&err, ChannelError::Permanent(e) if e.contains("160")),
        "{err:?}"
    );
    let err = ch.send(&msg(2, &"д".repeat(71))).await.unwrap_err();
    assert!(
        matches!(&err, ChannelError::Permanent(e) if e.contains("70")),
        "{err:?}"
    );
    assert!(sim.submits().is_empty());
    ch.close().await;
    sim.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_statuses_are_classified_for_the_worker() {
    let Some(mut sim) = Sim::start("statuses", &["--throttle", "1", "--reject-prefix", "44"])
    else {
        return;
    };
    let (ch, _) = bound(settings(sim.port())).await;
    let e = ch.send(&msg(1, "code 1")).await.unwrap_err();
    assert!(
        matches!(&e, ChannelError::Transient(t) if t.contains("ESME_RTHROTTLED")),
        "{e:?}"
    );
    sim.send_line("queue-full 1");
    sim.wait_for("control", |_| true, Duration::from_secs(2))
        .await;
    let e = ch.send(&msg(2, "code 2")).await.unwrap_err();
    assert!(
        matches!(&e, ChannelError::Transient(t) if t.contains("ESME_RMSGQFUL")),
        "{e:?}"
    );
    let mut uk = msg(3, "code 3");
    uk.destination = PhoneNumber::parse("44", "7400123456").unwrap();
    let e = ch.send(&uk).await.unwrap_err();
    assert!(
        matches!(&e, ChannelError::Permanent(t) if t.contains("ESME_RINVDSTADR")),
        "{e:?}"
    );
    assert!(ch.send(&msg(4, "code 4")).await.is_ok());
    ch.close().await;
    sim.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_bounds_outstanding_submits() {
    // Each submit_sm_resp comes 300 ms late: with a window of 2, six
    // concurrent sends need three rounds; with a window of 6, one.
    let Some(sim) = Sim::start("window", &["--delay-ms", "300"]) else {
        return;
    };
    // Window 2 needs ≥ 3 × 300 ms; window 6 about 300 ms (≤ 850 even on a
    // loaded machine).
    for (window, min_ms, max_ms) in [(2usize, 850u128, 2500u128), (6, 250, 850)] {
        let mut s = settings(sim.port());
        s.window = window;
        let (ch, _) = bound(s).await;
        let t = Instant::now();
        let sends: Vec<_> = (0..6).map(|i| msg(i, "code")).collect();
        let results = futures::future::join_all(sends.iter().map(|m| ch.send(m))).await;
        let ms = t.elapsed().as_millis();
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        assert!(
            (min_ms..max_ms).contains(&ms),
            "window {window}: six sends took {ms} ms, expected {min_ms}..{max_ms}"
        );
        ch.close().await;
    }
    sim.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_cap_spaces_submits_per_bind() {
    let Some(sim) = Sim::start("rate_cap", &[]) else {
        return;
    };
    let mut s = settings(sim.port());
    s.max_per_second = Some(20);
    let (ch, _) = bound(s).await;
    let t = Instant::now();
    let sends: Vec<_> = (0..10).map(|i| msg(i, "code")).collect();
    let results = futures::future::join_all(sends.iter().map(|m| ch.send(m))).await;
    assert!(results.iter().all(|r| r.is_ok()));
    // 10 submits at 20/s: the last one starts 9 × 50 ms after the first.
    let ms = t.elapsed().as_millis();
    assert!(ms >= 440, "10 sends at 20/s took only {ms} ms");
    let ts: Vec<u64> = sim
        .wait_count("submit", 10, Duration::from_secs(5))
        .await
        .iter()
        .map(|s| s["t"].as_u64().unwrap())
        .collect();
    let span = ts.iter().max().unwrap() - ts.iter().min().unwrap();
    // Loose on the receiving side: a loaded simulator reads in bursts.
    assert!(span >= 300, "the simulator saw them within {span} ms");
    ch.close().await;
    sim.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_are_read_from_text_and_from_tlvs() {
    for (mode, stat, want) in [
        ("text", "DELIVRD", otpgate_core::DeliveryStatus::Delivered),
        (
            "tlv",
            "UNDELIV",
            otpgate_core::DeliveryStatus::Undeliverable,
        ),
        ("both", "EXPIRED", otpgate_core::DeliveryStatus::Expired),
    ] {
        let Some(sim) = Sim::start(
            "receipts",
            &[
                "--receipt-mode",
                mode,
                "--receipt-stat",
                stat,
                "--receipt-delay-ms",
                "20",
            ],
        ) else {
            return;
        };
        let (ch, sink) = bound(settings(sim.port())).await;
        let acc = ch.send(&msg(1, "Your code is 4321")).await.unwrap();
        let resp = sim
            .wait_for("receipt", |_| true, Duration::from_secs(5))
            .await;
        assert_eq!(resp["resp_status"], 0, "deliver_sm_resp is ESME_ROK");
        let got = sink.0.lock().unwrap().clone();
        assert_eq!(got.len(), 1, "{mode}: {got:?}");
        let (channel, r) = &got[0];
        assert_eq!(channel, "smsc");
        assert_eq!(Some(&r.gateway_id), acc.gateway_id.as_ref(), "{mode}");
        assert_eq!(r.status, Some(want), "{mode}");
        assert!(r.detail.contains(stat), "{mode}: {}", r.detail);
        ch.close().await;
        sim.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_bind_fails_in_flight_sends_fast_and_reconnects() {
    let Some(mut sim) = Sim::start("drop", &["--delay-ms", "2500"]) else {
        return;
    };
    let (ch, _) = bound(settings(sim.port())).await;
    let m = msg(1, "code");
    let t = Instant::now();
    let (r, ()) = tokio::join!(ch.send(&m), async {
        sim.wait_for("submit", |_| true, Duration::from_secs(3))
            .await;
        sim.send_line("drop");
    });
    let err = r.unwrap_err();
    assert!(matches!(err, ChannelError::Unavailable(_)), "{err:?}");
    assert!(
        t.elapsed() < Duration::from_millis(2000),
        "the in-flight send waited {:?} instead of failing with the link",
        t.elapsed()
    );
    sim.send_line("delay-ms 0");
    sim.wait_for(
        "control",
        |c| c["cmd"] == "delay-ms",
        Duration::from_secs(3),
    )
    .await;
    assert!(
        ch.wait_bound(Duration::from_secs(5)).await,
        "no reconnect: {:?}",
        ch.health()
    );
    assert!(ch.send(&msg(2, "again")).await.is_ok());
    assert_eq!(
        sim.wait_count("bind", 2, Duration::from_secs(5))
            .await
            .len(),
        2,
        "bound twice"
    );
    ch.close().await;
    sim.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_bind_shows_in_health_and_sends_are_unavailable() {
    let Some(sim) = Sim::start("bad_password", &["--password", "other"]) else {
        return;
    };
    let ch = SmppChannel::start("smsc", settings(sim.port()), Arc::new(Collected::default()));
    sim.wait_for("bind", |b| b["ok"] == false, Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let h = ch.health();
    assert!(!h.up);
    let e = h.last_error.unwrap_or_default();
    assert!(e.contains("ESME_RINVPASWD"), "{e}");
    assert!(!e.contains("secret"), "the password never appears: {e}");
    let err = ch.send(&msg(1, "code")).await.unwrap_err();
    assert!(matches!(err, ChannelError::Unavailable(_)), "{err:?}");
    ch.close().await;
    sim.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_binds_send_enquire_link_and_close_unbinds() {
    let Some(sim) = Sim::start("keepalive", &[]) else {
        return;
    };
    let mut s = settings(sim.port());
    s.enquire_link = Duration::from_millis(1000);
    let (ch, _) = bound(s).await;
    sim.wait_for("enquire_link", |_| true, Duration::from_secs(3))
        .await;
    assert!(ch.health().up);
    ch.close().await;
    sim.wait_for("unbind", |_| true, Duration::from_secs(3))
        .await;
    assert!(!ch.health().up);
    sim.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transmitter_and_receiver_binds_carry_submits_and_receipts() {
    let Some(sim) = Sim::start("tx_rx", &["--receipt-delay-ms", "20"]) else {
        return;
    };
    let mut s = settings(sim.port());
    s.bind_mode = otpgate_sms::config::BindMode::TransmitterReceiver;
    let (ch, sink) = bound(s).await;
    // Both binds, before the first receipt needs the receiver.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ch.health().up && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acc = ch.send(&msg(1, "code")).await.unwrap();
    sim.wait_for("receipt", |_| true, Duration::from_secs(5))
        .await;
    let mut modes: Vec<String> = sim
        .of_kind("bind")
        .iter()
        .map(|b| b["mode"].as_str().unwrap().to_owned())
        .collect();
    modes.sort();
    assert_eq!(modes, ["receiver", "transmitter"]);
    let got = sink.0.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(Some(&got[0].1.gateway_id), acc.gateway_id.as_ref());
    ch.close().await;
    sim.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_binds_verify_the_smsc_certificate() {
    // A test CA and a leaf for 127.0.0.1 signed by it, made with the
    // openssl CLI (webpki wants a real chain: a CA is no server certificate).
    let dir = otpgate_testkit::TempDir::new("sms");
    let p = |f: &str| dir.0.join(f).to_str().unwrap().to_owned();
    let (key, cert) = (p("key.pem"), p("cert.pem"));
    std::fs::write(
        p("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n",
    )
    .unwrap();
    let steps: [Vec<String>; 3] = [
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=otpgate test CA",
            "-keyout",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([p("ca.key"), "-out".into(), p("ca.pem")])
        .collect(),
        [
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=smsc-sim",
            "-keyout",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([key.clone(), "-out".into(), p("leaf.csr")])
        .collect(),
        ["x509", "-req", "-days", "1", "-set_serial", "2", "-in"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                p("leaf.csr"),
                "-CA".into(),
                p("ca.pem"),
                "-CAkey".into(),
                p("ca.key"),
                "-extfile".into(),
                p("leaf.ext"),
                "-out".into(),
                cert.clone(),
            ])
            .collect(),
    ];
    for args in &steps {
        let made = std::process::Command::new("openssl").args(args).output();
        if !made.as_ref().is_ok_and(|o| o.status.success()) {
            let why = "the openssl CLI cannot make test certificates";
            if otpgate_testkit::require_services() {
                panic!("tls_binds_verify_the_smsc_certificate: {why}: {made:?}");
            }
            println!("SKIPPED tls_binds_verify_the_smsc_certificate: {why}");
            return;
        }
    }
    let ca = p("ca.pem");
    let Some(sim) = Sim::start("tls", &["--tls-key", &key, "--tls-cert", &cert]) else {
        return;
    };
    let toml = |ca: &str| {
        format!(
            "[channels.tls]\ntype = \"smpp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = true\n{ca}\
             system_id = \"otpgate\"\npassword = \"secret\"\nsource_addr = \"OTPGATE\"\n\
             reconnect_min_ms = 100\nreconnect_max_ms = 200\n",
            sim.port()
        )
    };
    let prepare = |t: String| {
        let cfg = otpgate_sms::SmsConfig::from_toml(&t).unwrap();
        let otpgate_sms::config::ChannelConfig::Smpp(c) = &cfg.channels["tls"] else {
            unreachable!()
        };
        otpgate_sms::smpp::prepare("tls", c, &|_| None).unwrap()
    };

    // Trusting the simulator's certificate: bound over TLS, text intact.
    let s = prepare(toml(&format!("tls_ca_file = \"{ca}\"\n")));
    let (ch, _) = bound(s).await;
    ch.send(&msg(1, "Ваш код 1234"))
        .await
        .expect("accepted over TLS");
    let submit = sim
        .wait_for("submit", |_| true, Duration::from_secs(5))
        .await;
    assert_eq!(submit["text"], "Ваш код 1234");
    ch.close().await;

    // Not trusting it: the handshake fails and health says why.
    let ch = SmppChannel::start("tls", prepare(toml("")), Arc::new(Collected::default()));
    assert!(!ch.wait_bound(Duration::from_millis(800)).await);
    let e = ch.health().last_error.unwrap_or_default();
    assert!(e.contains("TLS"), "{e}");
    ch.close().await;
    sim.stop();
}

/// A hand-rolled SMSC that binds anyone, then sends what the test says.
async fn raw_smsc() -> (u16, tokio::task::JoinHandle<tokio::net::TcpStream>) {
    use otpgate_sms::smpp::pdu::{Body, Pdu, frame_len};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 512];
            let n = s.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            if let Ok(Some(n)) = frame_len(&buf) {
                let bind = Pdu::decode(&buf[..n]).unwrap();
                let resp = Pdu::new(
                    bind.sequence,
                    Body::BindTransceiverResp {
                        system_id: "RAW".into(),
                    },
                );
                s.write_all(&resp.encode().unwrap()).await.unwrap();
                return s;
            }
        }
    });
    (port, task)
}

async fn read_pdu(s: &mut tokio::net::TcpStream) -> otpgate_sms::smpp::pdu::Pdu {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 16];
    s.read_exact(&mut head).await.unwrap();
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let mut frame = head.to_vec();
    frame.resize(len, 0);
    s.read_exact(&mut frame[16..]).await.unwrap();
    otpgate_sms::smpp::pdu::Pdu::decode(&frame).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_pdus_from_the_smsc_are_answered_or_end_the_session_never_panic() {
    use otpgate_sms::smpp::pdu::{Body, status};
    use tokio::io::AsyncWriteExt;
    let (port, smsc) = raw_smsc().await;
    let sink = Arc::new(Collected::default());
    let ch = SmppChannel::start("raw", settings(port), sink.clone());
    let mut s = smsc.await.unwrap();
    assert!(ch.wait_bound(Duration::from_secs(5)).await);

    // A deliver_sm whose sm_length runs past its body: generic_nack, and the
    // session stays up.
    let mut bad = vec![0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 77];
    bad.extend_from_slice(b"\0\x01\x01123\0\x01\x01456\0\x04\0\0\0\0\x01\0\x00\0\xC8abc");
    let n = bad.len() as u32;
    bad[..4].copy_from_slice(&n.to_be_bytes());
    s.write_all(&bad).await.unwrap();
    let nack = read_pdu(&mut s).await;
    assert_eq!(nack.body, Body::GenericNack);
    assert_eq!(nack.sequence, 77);
    assert_eq!(nack.status, status::ESME_RINVCMDLEN);
    assert!(ch.health().up);
    assert!(sink.0.lock().unwrap().is_empty());

    // An unknown command: generic_nack ESME_RINVCMDID (§4.3), still up.
    s.write_all(&[0, 0, 0, 16, 0, 0, 0x0F, 0x0F, 0, 0, 0, 0, 0, 0, 0, 78])
        .await
        .unwrap();
    let nack = read_pdu(&mut s).await;
    assert_eq!((nack.sequence, nack.status), (78, status::ESME_RINVCMDID));
    assert!(ch.health().up);

    // A command_length of 4 GiB cannot be framed: the session ends, cleanly.
    s.write_all(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 5])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while ch.health().up && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let h = ch.health();
    assert!(!h.up);
    assert!(
        h.last_error.unwrap_or_default().contains("command_length"),
        "the reason is kept for /readyz"
    );
    ch.close().await;
}
