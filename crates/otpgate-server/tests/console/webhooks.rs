//! The webhook on the Settings page and the Events page, at the HTTP level:
//! a URL is saved with a generated secret, an internal address is refused
//! with the reason, a new secret replaces the old, removal stops events,
//! and each account sees only its own events.

use reqwest::StatusCode;

use crate::helpers::{PASSWORD, Page, Visitor, spawn};

/// Posts the Settings page's webhook form: `url` with the button `action`
/// (save, rotate or remove).
async fn webhook_form(v: &mut Visitor, url: &str, action: &str) -> Page {
    let fields = [("url", url), ("action", action)];
    v.submit("/console/settings", "/console/settings/webhook", &fields)
        .await
}

#[tokio::test]
async fn a_webhook_is_set_rotated_and_removed_from_the_settings_page() {
    let app = spawn().await;
    let (mut v, id) = app.signed_up("hooks@example.com").await;
    let customer = otpgate_core::CustomerId::parse(&id).unwrap();

    // An internal address is refused, with the reason and the URL kept.
    let refused = webhook_form(&mut v, "http://169.254.169.254/latest", "save").await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        refused.body.contains("private, loopback or link-local"),
        "{}",
        refused.body
    );
    assert!(refused.body.contains("169.254.169.254/latest"));
    assert!(app.store.webhook_get(&customer).await.unwrap().is_none());

    let saved = webhook_form(&mut v, "https://hooks.example.com/otp", "save").await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let hook = app
        .store
        .webhook_get(&customer)
        .await
        .unwrap()
        .expect("set");
    assert_eq!(hook.url, "https://hooks.example.com/otp");
    let secret = hook.secret.expose().to_owned();
    assert!(
        secret.starts_with("whsec_") && secret.len() > 40,
        "{secret}"
    );
    // Shown to its account on the page.
    let page = v.get("/console/settings").await;
    assert!(page.body.contains(&secret));

    // A new URL keeps the secret; "New secret" replaces it.
    webhook_form(&mut v, "https://hooks.example.com/v2", "save").await;
    let hook = app.store.webhook_get(&customer).await.unwrap().unwrap();
    assert_eq!(
        (hook.url.as_str(), hook.secret.expose()),
        ("https://hooks.example.com/v2", secret.as_str())
    );
    webhook_form(&mut v, "", "rotate").await;
    let rotated = app.store.webhook_get(&customer).await.unwrap().unwrap();
    assert_ne!(rotated.secret.expose(), secret);

    // Events of its sends are listed on the Events page, for it alone.
    let token = app.token(&id, PASSWORD).await;
    let vid = app.send_ok(&token, "91", "9876543210").await;
    let events = v.get("/console/events").await;
    assert_eq!(events.status, StatusCode::OK);
    assert!(
        events.body.contains("verification.created"),
        "{}",
        events.body
    );
    assert!(events.body.contains(&vid));
    let mut other = Visitor::new(&app.base);
    other.sign_up("other@example.com", PASSWORD).await;
    let theirs = other.get("/console/events").await;
    assert!(!theirs.body.contains(&vid));
    assert!(theirs.body.contains("No webhook is set"));

    // Removal: the next send queues no event.
    webhook_form(&mut v, "", "remove").await;
    assert!(app.store.webhook_get(&customer).await.unwrap().is_none());
    app.send_ok(&token, "91", "9876543211").await;
    assert_eq!(app.store.event_list(&customer, 10).await.unwrap().len(), 1);
}
