//! `robotctl`: the phone side of the robotd protocol, for tests, demos and
//! people trying a robot without the app.

use clap::{Parser, Subcommand};

/// robotctl: talk to a robotd robot as a phone would.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the client ID of a phone number: md5 of its E.164 form.
    Id {
        /// The phone number with its country code; spaces allowed (`+48 555 555 555`).
        #[arg(required = true, num_args = 1..)]
        number: Vec<String>,
        /// Use the keyed variant, HMAC-SHA256 with this deployment secret.
        #[arg(long, env = "ROBOTD_ID_SECRET")]
        keyed: Option<String>,
    },
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
    match cli.command {
        Command::Id { number, keyed } => {
            let e164 = robotd::identity::normalize_e164(&number.join(" "))?;
            let id = match keyed {
                Some(secret) => robotd::identity::keyed_human_id(secret.as_bytes(), &e164),
                None => robotd::identity::human_id(&e164),
            };
            println!("{id}");
        }
    }
    Ok(())
}
