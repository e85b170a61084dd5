//! Account administration and the inbox, straight against the store named
//! by the settings (no server needed).

use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use otpgate_core::{CustomerId, SystemClock};
use otpgate_server::Settings;
use otpgate_server::accounts::{self, NewAccountRequest};
use otpgate_server::time::datetime;
use otpgate_store::Account;
use serde_json::json;

#[derive(Subcommand)]
pub enum CustomerCommand {
    /// Create an account; prints its customerId.
    Create {
        #[arg(long)]
        password: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        country: Option<String>,
        /// Start with exactly N credits instead of the default test credits.
        #[arg(long)]
        credits: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Add credits (a negative number removes, never below zero).
    Credit { customer_id: String, credits: i64 },
    /// Show an account.
    Show {
        customer_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Change the password; revokes every earlier token.
    SetPassword {
        customer_id: String,
        #[arg(long)]
        password: String,
    },
}

#[derive(Args)]
pub struct InboxArgs {
    /// Only messages to this number (E.164 digits, `+` optional).
    #[arg(long)]
    to: Option<String>,
    #[arg(long, default_value_t = 20)]
    limit: u32,
    #[arg(long)]
    json: bool,
}

fn parse_id(s: &str) -> anyhow::Result<CustomerId> {
    CustomerId::parse(s).map_err(|e| anyhow::anyhow!("{s:?}: {e}"))
}

pub async fn customer(settings: Settings, cmd: CustomerCommand) -> anyhow::Result<u8> {
    let store = otpgate_server::store::open(&settings).await?;
    match cmd {
        CustomerCommand::Create {
            password,
            email,
            country,
            credits,
            json,
        } => {
            let a = accounts::create(
                store.as_ref(),
                &SystemClock,
                &settings,
                NewAccountRequest {
                    password,
                    email,
                    country,
                    credits,
                    settings: Default::default(),
                },
            )
            .await?;
            if json {
                println!("{}", account_json(&a));
            } else {
                println!("{}", a.customer_id);
            }
        }
        CustomerCommand::Credit {
            customer_id,
            credits,
        } => {
            let id = parse_id(&customer_id)?;
            let a = store
                .account_add_credits(&id, credits)
                .await
                .with_context(|| format!("failed to credit {id}"))?;
            println!(
                "{}: {} credits, {} test credits",
                a.customer_id, a.credits, a.test_credits
            );
        }
        CustomerCommand::Show { customer_id, json } => {
            let id = parse_id(&customer_id)?;
            let Some(a) = store.account_get(&id).await? else {
                eprintln!("error: no account {id}");
                return Ok(1);
            };
            if json {
                println!("{}", account_json(&a));
            } else {
                println!("customerId:   {}", a.customer_id);
                println!("email:        {}", a.email.as_deref().unwrap_or("-"));
                println!("country:      {}", a.country.as_deref().unwrap_or("-"));
                println!("credits:      {}", a.credits);
                println!("test credits: {}", a.test_credits);
                println!("disabled:     {}", a.disabled);
            }
        }
        CustomerCommand::SetPassword {
            customer_id,
            password,
        } => {
            let id = parse_id(&customer_id)?;
            accounts::set_password(store.as_ref(), &id, &password).await?;
            println!("password changed for {id}; earlier tokens are revoked");
        }
    }
    Ok(0)
}

fn account_json(a: &Account) -> serde_json::Value {
    json!({
        "customerId": a.customer_id.as_str(),
        "email": a.email,
        "country": a.country,
        "credits": a.credits,
        "testCredits": a.test_credits,
        "disabled": a.disabled,
        "createdAt": a.created_at,
    })
}

pub async fn inbox(settings: Settings, args: InboxArgs) -> anyhow::Result<u8> {
    let store = otpgate_server::store::open(&settings).await?;
    let to = args.to.as_deref().map(|t| t.trim().trim_start_matches('+'));
    let entries = store.inbox_list(None, to, args.limit).await?;
    if args.json {
        let rows: Vec<_> = entries
            .iter()
            .map(|e| {
                json!({
                    "to": e.destination,
                    "text": e.text,
                    "verificationId": e.verification_id.map(|v| v.get().to_string()),
                    "createdAt": e.created_at,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else if entries.is_empty() {
        println!("(the inbox is empty)");
    } else {
        for e in &entries {
            println!("{}  +{}  {}", datetime(e.created_at), e.destination, e.text);
        }
    }
    Ok(0)
}

pub async fn migrate(settings: Settings) -> anyhow::Result<u8> {
    let store: Arc<dyn otpgate_store::Store> = otpgate_server::store::open(&settings).await?;
    println!("{} schema is up to date", store.backend());
    Ok(0)
}
