//! `otpgate serve`: logging, the optional development setup (`--dev`), and
//! the server until SIGTERM or SIGINT.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Args;
use otpgate_core::{Clock, SystemClock};
use otpgate_server::accounts::{self, NewAccountRequest};
use otpgate_server::{Application, Settings};
use otpgate_store::Store;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (beats the file and OTPGATE_LISTEN).
    #[arg(long)]
    listen: Option<String>,
    /// Development mode: a demo account, the inbox channel, ready-to-paste
    /// curl commands.
    #[arg(long)]
    dev: bool,
}

const DEMO_EMAIL: &str = "demo@otpgate.local";

pub async fn run(
    mut settings: Settings,
    warnings: Vec<String>,
    args: ServeArgs,
) -> anyhow::Result<u8> {
    if let Some(l) = args.listen {
        settings.listen = l;
    }
    settings.dev |= args.dev;
    init_logging(settings.log_json);
    for w in warnings {
        tracing::warn!("{w}");
    }
    if settings.dev && !settings.channels.is_empty() {
        tracing::warn!("--dev ignores the configured SMS channels and uses the inbox");
        settings.channels.clear();
        settings.routes.clear();
    }
    if settings.dev {
        // Every message goes to the inbox, so test credits cannot buy a
        // real SMS: let the demo account's test credits pay for any number.
        settings.fraud.test_credits_verified_only = false;
    }
    let store = otpgate_server::store::open(&settings).await?;
    let dev = settings.dev;
    let app =
        Application::build_with(settings.clone(), store.clone(), Arc::new(SystemClock)).await?;
    let base = if settings.public_url.is_empty() {
        app.local_addr()
            .map_or_else(|| settings.listen.clone(), |a| format!("http://{a}"))
    } else {
        settings.public_url.clone()
    };
    tracing::info!(address = %base, store = store.backend(), "otpgate listening");
    if dev {
        print_dev_banner(store.as_ref(), &settings, &base).await?;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    app.run_until_stopped(shutdown).await?;
    tracing::info!("otpgate stopped");
    Ok(0)
}

/// Creates the demo account once (its password kept beside the server's
/// secrets, so restarts print the same credentials) and prints how to use it.
async fn print_dev_banner(
    store: &dyn Store,
    settings: &Settings,
    base: &str,
) -> anyhow::Result<()> {
    let mut candidate = [0u8; 12];
    rand::fill(&mut candidate);
    let candidate = hex::encode(candidate);
    let password_bytes = store
        .secret_get_or_init("dev_demo_password", candidate.as_bytes())
        .await?;
    let password = String::from_utf8_lossy(&password_bytes).into_owned();
    let account = match store.account_by_email(DEMO_EMAIL).await? {
        Some(a) => a,
        None => {
            accounts::create(
                store,
                &SystemClock,
                settings,
                NewAccountRequest {
                    password: password.clone(),
                    email: Some(DEMO_EMAIL.into()),
                    country: Some("IN".into()),
                    credits: None,
                    settings: Default::default(),
                },
            )
            .await?
        }
    };
    let key = STANDARD.encode(password.as_bytes());
    let id = account.customer_id.as_str();
    let _ = SystemClock.now_ms();
    println!(
        r#"
otpgate is running in development mode: messages go to the inbox, not to phones.

  demo customerId: {id}
  demo password:   {password}

1. Get a token:
   TOKEN=$(curl -s "{base}/auth/v1/authentication/token?customerId={id}&key={key}&scope=NEW" | sed -E 's/.*"token":"([^"]+)".*/\1/')

2. Send a code:
   curl -s -X POST -H "authToken: $TOKEN" "{base}/verification/v3/send?countryCode=91&mobileNumber=9876543210&flowType=SMS"

3. Read it from the inbox:
   {exe} inbox --database {db}

4. Validate it (use the verificationId from step 2 and the code from step 3):
   curl -s -H "authToken: $TOKEN" "{base}/verification/v3/validateOtp?verificationId=ID&code=CODE"
"#,
        db = settings.database_url,
        exe = std::env::current_exe()
            .map_or_else(|_| "otpgate".to_owned(), |p| p.display().to_string()),
    );
    if settings.console.enabled {
        println!("The console (sign up, logs, sandbox inbox): {base}/console\n");
    }
    Ok(())
}

fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_env("OTPGATE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

async fn wait_for_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down: finishing in-flight requests and deliveries");
    shutdown.cancel();
}
