//! Logging: structured fields to the journal when stderr is connected to it (the agent runs as
//! a unit), plain lines on stderr otherwise. Verbosity comes from `-v` or from
//! `GATEWAY_FIRSTBOOT_LOG=error|warn|info|debug|trace`, which a unit drop-in can set.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;

pub const LOG_ENV: &str = "GATEWAY_FIRSTBOOT_LOG";

struct Stderr {
    level: LevelFilter,
}

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level && metadata.target().starts_with("gateway_firstboot")
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Progress events (they carry a MESSAGE_ID) are already on standard output; on a
        // terminal one line is enough. The journal gets them with their fields.
        if record
            .key_values()
            .get(log::kv::Key::from_str("MESSAGE_ID"))
            .is_some()
        {
            return;
        }
        let level = match record.level() {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        let _ = writeln!(
            std::io::stderr().lock(),
            "gateway-firstboot: {level}: {}",
            record.args()
        );
    }

    fn flush(&self) {}
}

fn level(verbose: u8) -> LevelFilter {
    let from_env = std::env::var(LOG_ENV)
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok());
    let from_flag = match verbose {
        0 => LevelFilter::Warn,
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    from_env.map_or(from_flag, |env| env.max(from_flag))
}

/// Installs the logger. Never fails: with no journal and no stderr there is nowhere to complain.
pub fn init(verbose: u8) {
    let mut level = level(verbose);
    let journal = systemd_journal_logger::connected_to_journal()
        .then(|| {
            systemd_journal_logger::JournalLog::new().ok().map(|j| {
                j.with_syslog_identifier("gateway-firstboot".into())
                    .with_extra_fields(vec![(
                        "GATEWAY_FIRSTBOOT_VERSION",
                        env!("CARGO_PKG_VERSION"),
                    )])
            })
        })
        .flatten();
    let installed = match journal {
        Some(j) => {
            // In the journal every step is an event worth keeping.
            level = level.max(LevelFilter::Info);
            j.install()
        }
        None => log::set_boxed_logger(Box::new(Stderr { level })),
    };
    if installed.is_ok() {
        log::set_max_level(level);
    }
}
