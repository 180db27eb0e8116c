//! Logging: the systemd journal when running under systemd, stderr otherwise.
//!
//! Code logs through `tracing` with structured fields. On a terminal a
//! `tracing-subscriber` formatter writes to stderr. Under systemd (stderr is
//! connected to the journal) no tracing subscriber is installed, so `tracing`'s
//! `log` feature turns events into `log` records, which
//! `systemd-journal-logger` sends to the journal with their priority; the
//! same `RUST_LOG` syntax filters both paths. Keys and secrets are never logged.

use log::{Log, Metadata, Record};

/// Default filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info";

struct FilteredJournal {
    filter: env_filter::Filter,
    journal: systemd_journal_logger::JournalLog,
}

impl Log for FilteredJournal {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        self.filter.enabled(m)
    }
    fn log(&self, r: &Record<'_>) {
        if self.filter.matches(r) {
            self.journal.log(r);
        }
    }
    fn flush(&self) {}
}

/// Install logging once, at process start. `quiet` lowers the default to
/// warnings (for admin subcommands whose output is for a person).
pub fn init(quiet: bool) {
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| if quiet { "warn".into() } else { DEFAULT_FILTER.into() });
    if systemd_journal_logger::connected_to_journal() {
        if let Ok(journal) = systemd_journal_logger::JournalLog::new() {
            let filter = env_filter::Builder::new().parse(&spec).build();
            let max = filter.filter();
            let journal = journal.with_syslog_identifier("robotd".into());
            if log::set_boxed_logger(Box::new(FilteredJournal { filter, journal })).is_ok() {
                log::set_max_level(max);
                return;
            }
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|_| DEFAULT_FILTER.into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
