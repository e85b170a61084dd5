//! The `otpgate` binary: the server (`serve`), account administration
//! (`customer`), the development inbox (`inbox`), schema migration, the
//! benchmark, and the client commands (`token`, `send`, `validate`, `verify`).
#![forbid(unsafe_code)]

mod admin;
mod bench;
mod client_cli;
mod serve;
mod settings;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "otpgate",
    version,
    about = "Self-hosted Verify Now-compatible OTP service"
)]
struct Cli {
    /// TOML settings file.
    #[arg(long, global = true, env = "OTPGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Database URL: sqlite://FILE or postgres://… (beats the file and
    /// OTPGATE_DATABASE_URL).
    #[arg(long, global = true)]
    database: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(serve::ServeArgs),
    /// Manage accounts.
    #[command(subcommand)]
    Customer(admin::CustomerCommand),
    /// List what the development inbox channel received, newest first.
    Inbox(admin::InboxArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Load-test a running server: token → send → code from inbox → validate.
    Bench(bench::BenchArgs),
    #[command(flatten)]
    Client(client_cli::ClientCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(run(cli));
    ExitCode::from(code)
}

async fn run(cli: Cli) -> u8 {
    // The client commands talk to a server over HTTP and read only their own
    // OTPGATE_URL/… variables, not the server's settings.
    let command = match cli.command {
        Command::Client(c) => return client_cli::run(c).await,
        other => other,
    };
    let loaded = settings::load(cli.config.as_deref());
    let (mut settings, warnings) = match loaded {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 2;
        }
    };
    if let Some(db) = cli.database {
        settings.database_url = db;
    }
    let result = match command {
        Command::Serve(args) => serve::run(settings, warnings, args).await,
        Command::Customer(cmd) => admin::customer(settings, cmd).await,
        Command::Inbox(args) => admin::inbox(settings, args).await,
        Command::Migrate => admin::migrate(settings).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Client(c) => Ok(client_cli::run(c).await),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}
