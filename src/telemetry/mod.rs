//! Logging: structured events to journald (real journal fields) when a
//! journal socket exists, else JSON lines on stderr.
//!
//! Secrets never reach a log line: key material lives in types whose `Debug`
//! is redacted, and no log call formats a credential or request body.

pub mod access;
pub mod metrics;

use std::path::Path;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogTarget;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Where log lines went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journald,
    StderrJson,
    StderrText,
}

/// Installs the global subscriber. `human` selects plain text on stderr (for
/// one-shot commands such as `--check-config`).
pub fn init(target: LogTarget, level: &str, human: bool) -> Sink {
    let filter = || EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    if human {
        let _ = tracing_subscriber::registry()
            .with(filter())
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .without_time(),
            )
            .try_init();
        return Sink::StderrText;
    }
    let want_journal = match target {
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => Path::new(JOURNAL_SOCKET).exists(),
    };
    if want_journal {
        if let Ok(layer) = tracing_journald::layer() {
            let layer = layer
                .with_field_prefix(None)
                .with_syslog_identifier("strongroomd".to_owned());
            if tracing_subscriber::registry()
                .with(filter())
                .with(layer)
                .try_init()
                .is_ok()
            {
                return Sink::Journald;
            }
        }
    }
    let _ = tracing_subscriber::registry()
        .with(filter())
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_writer(access::StderrLines),
        )
        .try_init();
    Sink::StderrJson
}
