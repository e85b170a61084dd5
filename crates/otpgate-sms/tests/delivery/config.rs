//! The example configurations stay valid, and `build` refuses what it must.

use otpgate_sms::Router;
use otpgate_sms::config::{ChannelConfig, ConfigError, SmsConfig, build_table};

use crate::common::Db;

fn env(k: &str) -> Option<String> {
    k.ends_with("PASSWORD")
        .then(|| "pw".to_owned())
        .or_else(|| matches!(k, "TWILIO_AUTH_TOKEN" | "ACME_API_TOKEN").then(|| "token".to_owned()))
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
    for name in ["smpp.toml", "http.toml"] {
        let text = std::fs::read_to_string(format!("{dir}/examples/{name}")).expect("read");
        assert!(
            readme.contains(&text),
            "README.md must embed examples/{name} verbatim: update one from the other"
        );
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
