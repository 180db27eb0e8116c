//! `robotd`: the robot service and its admin subcommands.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use robotd::config::{self, Config};

/// robotd: the robot side of "call your robot from your phone".
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Configuration file.
    #[arg(long, short, global = true, env = "ROBOTD_CONFIG", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Run,
    /// Print the robot's client ID (made on first use).
    Id,
    /// Validate the configuration and print the effective values (secrets redacted).
    CheckConfig,
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    robotd::logging::init(!matches!(command, Command::Run));
    let cfg = Config::load(&cli.config)?;
    match command {
        Command::Run => run(cfg),
        Command::Id => {
            robotd::app::ensure_state_dir(&cfg.robot.state_dir)?;
            let id = robotd::identity::load_or_create_robot_id(&cfg.robot.state_dir)?;
            println!("{id}");
            Ok(())
        }
        Command::CheckConfig => {
            println!("# {}: OK\n{}", cli.config.display(), cfg.to_toml());
            Ok(())
        }
    }
}

fn run(cfg: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            let _ = tx.send(true);
        });
        robotd::app::run(cfg, rx).await
    })
}

/// SIGTERM (systemd) or SIGINT (Ctrl-C).
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
