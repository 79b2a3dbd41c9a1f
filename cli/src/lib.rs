//! What lbsync's two binaries, `lbsync-client` and `lbsync-server`, share on the command line,
//! so that they behave alike and a new option gets every convention without a line of its own.
//!
//! - [`mod@parse`] turns the program's arguments into its clap `Parser` type after layering, for
//!   every option, generically over clap's `Command`: the command line, then an `LBSYNC_*`
//!   variable ([`mod@env`]), then the config file ([`config`]), then the built-in default.
//! - [`dirs`]: the XDG base directories.
//! - [`logging`]: `-v`/`-q`, `--log-format text|json`, colour only on a terminal without
//!   `NO_COLOR`, dated timestamps, and a log that never fails the program.
//! - [`errors`]: one way to print a fatal error, each cause said once.
//! - [`units`]: bytes in decimal units and counted nouns ("1 chunk", "2 chunks").
//! - [`version`]: the `--version` line, with the protocol version.
//! - [`generate`]: completion scripts and man pages.
//!
//! ```
//! assert_eq!(lbsync_cli::units::bytes(41_200), "41.2 KB");
//! assert_eq!(lbsync_cli::units::count(1, "chunk"), "1 chunk");
//! ```

pub mod config;
pub mod dirs;
pub mod env;
pub mod errors;
pub mod generate;
pub mod logging;
pub mod parse;
pub mod units;
pub mod version;

pub use logging::{Common, LogFormat};
pub use parse::{Parsed, Program, parse};

/// Exit status: the command did what was asked.
pub const EXIT_OK: u8 = 0;
/// Exit status: the command failed.
pub const EXIT_FATAL: u8 = 1;
/// Exit status: a mistake in how the program was called (an option, a config file, a path).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: finished, but some paths are pending or wait for a person: run it again.
pub const EXIT_PENDING: u8 = 3;

/// The exit statuses in words, for `--help`.
pub const EXIT_HELP: &str = "Exit status: 0 done; 1 failed; 2 usage error (a bad option, config \
                             file, URL or path); 3 finished, but some paths are pending or need \
                             attention: run it again";
