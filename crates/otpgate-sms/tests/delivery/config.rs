//! The example configurations stay valid, and `build` refuses what it must.

use otpgate_sms::Router;
use otpgate_sms::config::{ChannelConfig, ConfigError, SmsConfig, build_table};

use crate::common::Db;

fn env(k: &str) -> Option<String> {
    k.ends_with("PASSWORD")
        .then(|| "pw".to_owned())
        .or_else(|| {
            matches!(
                k,
                "TWILIO_AUTH_TOKEN"
                    | "ACME_API_TOKEN"
                    | "WHATSAPP_TOKEN"
                    | "WHATSAPP_APP_SECRET"
                    | "WHATSAPP_VERIFY_TOKEN"
            )
            .then(|| "token".to_owned())
        })
        .or_else(|| {
            k.ends_with("_RECEIPT_TOKEN")
                .then(|| "receipt-token".to_owned())
        })
}

fn example(name: &str) -> SmsConfig {
    let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("read the example");
    SmsConfig::from_toml(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_smpp_example_is_valid() {
    let cfg = example("smpp.toml");
    cfg.validate(&env).expect("valid");
    assert_eq!(cfg.channels.len(), 2);
    assert_eq!(cfg.routes.len(), 2);
    let ChannelConfig::Smpp(a) = &cfg.channels["smsc-a"] else {
        panic!("smsc-a is SMPP")
    };
    assert_eq!((a.window, a.max_per_second), (10, Some(50)));
    // Without the secret in the environment it is refused, naming the variable.
    let e = cfg.validate(&|_| None).unwrap_err();
    assert!(
        matches!(e, ConfigError::MissingEnv { ref var, .. } if var.starts_with("SMSC_")),
        "{e}"
    );
}

#[test]
fn the_http_example_is_valid() {
    let cfg = example("http.toml");
    cfg.validate(&env).expect("valid");
    assert_eq!(cfg.channels.len(), 3);
    // Every channel of the example authenticates its receipts.
    for (name, ch) in &cfg.channels {
        let auth = otpgate_sms::config::receipt_auth(name, ch, &env).expect("resolves");
        assert!(
            matches!(auth, otpgate_sms::config::ReceiptAuth::Token(_)),
            "{name}: {auth:?}"
        );
    }
}

#[test]
fn the_readme_embeds_the_examples_as_they_are() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{dir}/../../README.md")).expect("read README");
    for name in ["smpp.toml", "http.toml", "channels.toml", "fallback.toml"] {
        let text = std::fs::read_to_string(format!("{dir}/examples/{name}")).expect("read");
        assert!(
            readme.contains(&text),
            "README.md must embed examples/{name} verbatim: update one from the other"
        );
    }
}

#[test]
fn the_whatsapp_voice_and_email_example_is_valid() {
    let cfg = example("channels.toml");
    cfg.validate(&env).expect("valid");
    let kinds: Vec<&str> = cfg
        .channels
        .values()
        .map(|c| match c {
            ChannelConfig::Whatsapp(_) => "whatsapp",
            ChannelConfig::Voice(_) => "voice",
            ChannelConfig::Email(_) => "email",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["email", "voice", "whatsapp"]);
    // The voice channel's callbacks carry a token; WhatsApp's webhook is
    // authenticated by its signature elsewhere, e-mail has none.
    let auth = otpgate_sms::config::receipt_auth("voice", &cfg.channels["voice"], &env).unwrap();
    assert!(matches!(auth, otpgate_sms::config::ReceiptAuth::Token(_)));
    let e = cfg.validate(&|_| None).unwrap_err();
    assert!(matches!(e, ConfigError::MissingEnv { .. }), "{e}");
}

#[test]
fn the_fallback_example_is_valid_and_bad_workflows_are_refused() {
    let cfg = example("fallback.toml");
    cfg.validate(&env).expect("valid");
    let steps: Vec<(&str, u32)> = cfg.routes[0]
        .fallback
        .iter()
        .map(|f| (f.flow.as_str(), f.after_secs))
        .collect();
    assert_eq!(steps, [("WHATSAPP", 10), ("VOICE", 30)]);
    let base =
        "[channels.a]\ntype = \"inbox\"\n[[routes]]\nflow_types = [\"SMS\"]\nchannels = [\"a\"]\n";
    for (fallback, why) in [
        (
            "[{ flow = \"WHATSAPP\", after_secs = 5 }]",
            "no route serves",
        ),
        ("[{ flow = \"SMS\", after_secs = 0 }]", "after_secs"),
        (
            "[{ flow = \"SMS\", after_secs = 9 }, { flow = \"SMS\", after_secs = 5 }]",
            "after_secs",
        ),
        (
            "[{ flow = \"SMS\", after_secs = 1 }, { flow = \"SMS\", after_secs = 2 }, { flow = \"SMS\", after_secs = 3 }]",
            "at most 2",
        ),
    ] {
        let cfg = SmsConfig::from_toml(&format!("{base}fallback = {fallback}\n")).unwrap();
        let e = cfg.validate(&env).unwrap_err();
        assert!(e.to_string().contains(why), "{fallback}: {e}");
    }
}

#[tokio::test]
async fn build_refuses_unknown_channels_and_defaults_to_the_inbox() {
    let db = Db::new().await;
    let cfg =
        SmsConfig::from_toml("[channels.a]\ntype = \"inbox\"\n[[routes]]\nchannels = [\"b\"]\n")
            .unwrap();
    let e = build_table(&cfg, db.store.clone(), db.clock.clone(), &env).err();
    assert_eq!(
        e,
        Some(ConfigError::UnknownChannel {
            route: 0,
            channel: "b".into()
        })
    );
    let t = build_table(
        &SmsConfig::default(),
        db.store.clone(),
        db.clock.clone(),
        &env,
    )
    .unwrap();
    let names: Vec<String> = t.channels().iter().map(|c| c.name().to_owned()).collect();
    assert_eq!(names, ["inbox"]);
    assert!(t.accepts(91, "SMS"));
}
