//! `robotd`: the robot service and its admin subcommands.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use robotd::config::{self, Config};
use robotd::robot::admin::{AtPlace, EstopCleared, OwnerList, PairShown, Removed, Request, Status};

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
    /// Open a pairing window on the running daemon and show its QR code.
    Pair {
        /// Close the current pairing window instead.
        #[arg(long, conflicts_with = "replace")]
        close: bool,
        /// Let this owner (its client ID, see `robotd owners`) pair again and
        /// get a new key, e.g. after losing its phone. Without it a pairing
        /// never replaces an owner's key.
        #[arg(long, value_name = "ID")]
        replace: Option<String>,
    },
    /// List the owners (phones paired with this robot), or remove one.
    Owners {
        #[command(subcommand)]
        action: Option<OwnersAction>,
    },
    /// Show the running daemon's status.
    Status,
    /// Tell the running daemon where the robot stands (a place of the map),
    /// e.g. after putting it back on its dock when its position is unknown.
    At {
        /// The place name, e.g. `home`.
        place: String,
    },
    /// The e-stop latch: after the e-stop fired, the motors stay off until it is cleared.
    Estop {
        #[command(subcommand)]
        action: EstopAction,
    },
    /// Drive every configured motor pin to its safe level and disable PWM,
    /// without the daemon (for systemd's ExecStopPost=, after any exit).
    /// Refused while a robotd runs on this state directory, unless --force.
    SafeStop {
        /// Take the pins even though a robotd is running (it keeps believing
        /// its own pin states; restart it afterwards).
        #[arg(long)]
        force: bool,
    },
    /// List the cameras (V4L2 devices) with their formats, sizes and rates.
    Cameras,
    /// Gone: the media helper is its own binary, `robotd-media`, next to
    /// robotd's (so robotd itself does not link GStreamer). Kept as an error
    /// that says so.
    #[command(hide = true)]
    Media,
}

#[derive(Subcommand)]
enum EstopAction {
    /// Re-arm the motors; refused while the e-stop switch is still pressed.
    Clear,
}

#[derive(Subcommand)]
enum OwnersAction {
    /// List owners (the default).
    List,
    /// Remove an owner; takes effect at once, without a restart.
    Remove {
        /// The owner's client ID (see `robotd owners`).
        id: String,
    },
}

fn main() -> std::process::ExitCode {
    robotd::daemon::exit_code(real_main())
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    if matches!(command, Command::Media) {
        return Err(media_gone());
    }
    robotd::daemon::logging::init(!matches!(command, Command::Run));
    let cfg = Config::load(&cli.config)?;
    match command {
        Command::Run => run(cfg),
        Command::Id => {
            robotd::daemon::ensure_state_dir(&cfg.robot.state_dir)?;
            let id = robotd::wire::identity::load_or_create_robot_id(&cfg.robot.state_dir)?;
            println!("{id}");
            Ok(())
        }
        Command::CheckConfig => {
            println!("# {}: OK\n{}", cli.config.display(), cfg.to_toml());
            Ok(())
        }
        Command::Pair { close, replace } => {
            if close {
                admin::<serde_json::Value>(&cfg, Request::PairClose)?;
                println!("pairing window closed");
            } else {
                let p: PairShown = admin(&cfg, Request::Pair { replace })?;
                println!("{}", p.qr);
                println!("Scan the QR code with the app, or pair with robotctl:");
                println!("  robotctl pair '{}' --phone +<your number>", p.uri);
                println!("QR code image: {}", p.png.display());
                let left = p.expires_at_ms.saturating_sub(robotd::wire::props::now_ms()) / 1000;
                println!("The window closes after the first phone pairs, 20 failed attempts, or in {left} s.");
            }
            Ok(())
        }
        Command::Owners { action } => match action.unwrap_or(OwnersAction::List) {
            OwnersAction::List => {
                let list: OwnerList = admin(&cfg, Request::Owners)?;
                if list.owners.is_empty() {
                    println!("no owners; pair a phone with `robotd pair`");
                }
                for o in list.owners {
                    println!("{}  {}  paired {}", o.id, o.nickname, format_ms(o.paired_at_ms));
                }
                Ok(())
            }
            OwnersAction::Remove { id } => {
                admin::<Removed>(&cfg, Request::OwnersRemove { id: id.clone() })?;
                println!("removed {id}");
                Ok(())
            }
        },
        Command::At { place } => {
            admin::<AtPlace>(&cfg, Request::SetAt { place: place.clone() })?;
            println!("the robot is now at {place}");
            Ok(())
        }
        Command::Estop { action: EstopAction::Clear } => {
            let c: EstopCleared = admin(&cfg, Request::EstopClear)?;
            if c.was_latched {
                println!("e-stop cleared: the motors may run again");
            } else {
                println!("the e-stop was not latched: nothing to clear");
            }
            Ok(())
        }
        Command::SafeStop { force } => {
            // Held while the pins are set, so no robotd starts meanwhile.
            let _no_daemon = match robotd::daemon::instance::check_not_running(&cfg.robot.state_dir) {
                Ok(guard) => guard,
                Err(e) if force => {
                    tracing::warn!(error = %e, "safe-stop --force: taking the pins anyway");
                    None
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(
                        "robotd safe-stop refused: the daemon owns the motor pins while it runs \
                         (use `systemctl stop robotd`, which runs safe-stop after it, or --force)",
                    ));
                }
            };
            let pins = robotd::motion::safe_stop(&cfg.hardware)?;
            println!("motors safe: pins {pins:?} at their safe level, PWM disabled");
            Ok(())
        }
        Command::Cameras => {
            let cams = robotd::video::camera::list_cameras();
            if cams.is_empty() {
                println!("no V4L2 camera found; set video.device = \"test\" for a test pattern");
            } else {
                print!("{}", robotd::video::camera::format_cameras(&cams));
            }
            Ok(())
        }
        Command::Media => Err(media_gone()),
        Command::Status => {
            let status: Status = admin(&cfg, Request::Status)?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
    }
}

/// `robotd media` (the helper before it was its own binary): what to run instead.
fn media_gone() -> anyhow::Error {
    let helper = std::env::current_exe()
        .map(|e| e.with_file_name(robotd::daemon::HELPER_NAME).display().to_string())
        .unwrap_or_else(|_| robotd::daemon::HELPER_NAME.into());
    anyhow::anyhow!(
        "`robotd media` is gone: the media helper is its own binary, {helper}, which robotd spawns per call"
    )
}

/// Send a request to the running daemon; an error answer becomes an error.
fn admin<T: serde::de::DeserializeOwned>(cfg: &Config, req: Request) -> anyhow::Result<T> {
    Ok(robotd::daemon::control::call_as(&cfg.control.socket, &req)?)
}

/// Unix milliseconds as a UTC date and time.
fn format_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
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
        Ok(robotd::daemon::run(cfg, rx).await?)
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
