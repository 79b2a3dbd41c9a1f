//! The log: its level from `-v`/`-q` (or `RUST_LOG`, which wins when set), its format from
//! `--log-format`, colour only when its stream is a terminal and `NO_COLOR` is unset, every
//! line stamped with the date and time. A log write that fails (the stream closed, a broken
//! pipe, a full disk behind a redirect) is dropped: logging never fails or stalls the program.

use std::io::{IsTerminal as _, Write};
use std::path::PathBuf;

use clap::ArgAction;

/// The options every lbsync program has (flattened into each one's `Parser`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Common {
    /// Read options from this TOML file (it must exist) [default:
    /// $XDG_CONFIG_HOME/lbsync/PROGRAM.toml, used if it exists]
    #[arg(long, global = true, value_name = "FILE", env = "LBSYNC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log more: -v debug, -vv trace (RUST_LOG, when set, decides instead)
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// Log less: -q warnings and errors only, -qq errors only, -qqq nothing
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub quiet: u8,
    /// The log's format: lines for people, or one JSON object a line
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// "2026-12-01 12:30:01 warning: ..."
    #[default]
    Text,
    /// {"timestamp":"2026-12-01T12:30:01.123456Z","level":"WARN","fields":{"message":...}}
    Json,
}

/// Where the log goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn is_terminal(self) -> bool {
        match self {
            Stream::Stdout => std::io::stdout().is_terminal(),
            Stream::Stderr => std::io::stderr().is_terminal(),
        }
    }
}

/// How a text line looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// For a person at a terminal: local time, "warning:"/"error:" only when it is one.
    Person,
    /// For a service's log: UTC time with milliseconds, and every line's level.
    Service,
}

/// What one program's log is.
#[derive(Clone, Copy, Debug)]
pub struct Setup<'a> {
    /// The stream.
    pub stream: Stream,
    /// Its text style.
    pub style: Style,
    /// Crates held at `warn` unless `-vv` (h2, hyper: chatty at debug).
    pub noisy: &'a [&'a str],
}

/// The level `-v`/`-q` ask for: info, one step per flag.
pub fn level(common: &Common) -> &'static str {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let i = (3 + i32::from(common.verbose) - i32::from(common.quiet)).clamp(0, 5);
    LEVELS[i as usize]
}

/// The filter without `RUST_LOG`.
pub fn directives(common: &Common, noisy: &[&str]) -> String {
    let mut d = level(common).to_owned();
    if common.verbose < 2 {
        for c in noisy {
            d.push_str(&format!(",{c}=warn"));
        }
    }
    d
}

/// True when the log may be coloured: a terminal, and `NO_COLOR` unset or empty.
pub fn colour(stream: Stream) -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && stream.is_terminal()
}

/// Installs the log for the process (a second call changes nothing).
pub fn init(common: &Common, setup: Setup<'_>) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(directives(common, setup.noisy)));
    let stream = setup.stream;
    let writer = move || Never(stream);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // Its fallback for a failed write prints with `eprintln!`, which panics when stderr
        // is gone.
        .log_internal_errors(false);
    let _ = match common.log_format {
        LogFormat::Json => builder
            .json()
            .with_timer(tracing_subscriber::fmt::time::ChronoUtc::new(
                "%Y-%m-%dT%H:%M:%S%.6fZ".into(),
            ))
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder
            .event_format(Lines {
                style: setup.style,
                colour: colour(stream),
            })
            .try_init(),
    };
}

/// A writer that never fails its caller.
struct Never(Stream);

impl Write for Never {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = match self.0 {
            Stream::Stdout => std::io::stdout().write_all(buf),
            Stream::Stderr => std::io::stderr().write_all(buf),
        };
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = match self.0 {
            Stream::Stdout => std::io::stdout().flush(),
            Stream::Stderr => std::io::stderr().flush(),
        };
        Ok(())
    }
}

/// A text line: the date and time, the level, the message and its fields.
struct Lines {
    style: Style,
    colour: bool,
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Lines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing::Level;
        let level = *event.metadata().level();
        let paint = match level {
            Level::ERROR => "\x1b[31m",
            Level::WARN => "\x1b[33m",
            Level::INFO => "\x1b[32m",
            _ => "\x1b[2m",
        };
        let (on, off) = if self.colour {
            (paint, "\x1b[0m")
        } else {
            ("", "")
        };
        match self.style {
            Style::Person => {
                write!(w, "{} ", chrono::Local::now().format("%Y-%m-%d %H:%M:%S"))?;
                match level {
                    Level::WARN => write!(w, "{on}warning:{off} ")?,
                    Level::ERROR => write!(w, "{on}error:{off} ")?,
                    _ => {}
                }
            }
            Style::Service => {
                write!(
                    w,
                    "{} {on}{level:>5}{off} ",
                    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ")
                )?;
            }
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbose_and_quiet_step_from_info() {
        let c = |verbose, quiet| Common {
            verbose,
            quiet,
            ..Common::default()
        };
        assert_eq!(level(&c(0, 0)), "info");
        assert_eq!(level(&c(1, 0)), "debug");
        assert_eq!(level(&c(5, 0)), "trace");
        assert_eq!(level(&c(0, 1)), "warn");
        assert_eq!(level(&c(0, 3)), "off");
        assert_eq!(directives(&c(0, 0), &["h2"]), "info,h2=warn");
        assert_eq!(directives(&c(2, 0), &["h2"]), "trace");
    }
}
