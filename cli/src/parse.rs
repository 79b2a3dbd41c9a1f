//! From the arguments to the program's `Parser`, with every option layered: the command line,
//! then its `LBSYNC_*` variable, then the config file, then the built-in default.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::config::{self, ConfigError};
use crate::dirs::Env;

/// Which program is parsing.
#[derive(Clone, Copy, Debug)]
pub struct Program {
    /// Its name, `lbsync-client`.
    pub name: &'static str,
    /// Its crate's version (`env!("CARGO_PKG_VERSION")`).
    pub version: &'static str,
    /// Its config file's name in `$XDG_CONFIG_HOME/lbsync/`: `client.toml`.
    pub config_file: &'static str,
}

/// What [`parse`] made.
#[derive(Debug)]
pub struct Parsed<P> {
    /// The parsed options.
    pub cli: P,
    /// The command that parsed them (for completions and man pages).
    pub command: clap::Command,
    /// The config file that was read, if any.
    pub config: Option<PathBuf>,
}

/// Why the arguments could not be parsed.
#[derive(Debug)]
pub enum Failure {
    /// clap's own (a bad option; also `--help` and `--version`, which are not errors).
    Clap(clap::Error),
    /// The config file.
    Config(ConfigError),
}

impl Failure {
    /// Prints the message and ends the process: status 2 for an error, 0 for `--help`.
    pub fn exit(self, program: &str) -> ! {
        match self {
            Failure::Clap(e) => e.exit(),
            Failure::Config(e) => {
                use std::io::Write as _;
                let _ = writeln!(std::io::stderr(), "{program}: {e}");
                std::process::exit(i32::from(crate::EXIT_USAGE))
            }
        }
    }
}

/// The config file the arguments and environment point to, and whether it must exist: `--config
/// FILE` (or `--config=FILE`), else `$LBSYNC_CONFIG`, else the default one, if any.
pub fn config_file(program: &Program, args: &[OsString], env: Env<'_>) -> Option<(PathBuf, bool)> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let Some(a) = a.to_str() else { continue };
        if a == "--" {
            break;
        }
        if a == "--config" {
            return it.next().map(|f| (PathBuf::from(f), true));
        }
        if let Some(f) = a.strip_prefix("--config=") {
            return Some((PathBuf::from(f), true));
        }
    }
    if let Some(f) = env("LBSYNC_CONFIG").filter(|f| !f.is_empty()) {
        return Some((PathBuf::from(f), true));
    }
    crate::dirs::config(env).map(|d| (d.join(program.config_file), false))
}

/// The program's command with the conventions applied: its version line, `LBSYNC_*` names and
/// the config file's values as defaults.
pub fn command<P: clap::CommandFactory>(
    program: &Program,
    args: &[OsString],
    env: Env<'_>,
) -> Result<(clap::Command, Option<PathBuf>), ConfigError> {
    let cmd = P::command()
        .name(program.name)
        .version(crate::version::string(program.version))
        .mut_arg("config", |a| {
            a.help(format!(
                "Read options from this TOML file (it must exist) [default: \
                 $XDG_CONFIG_HOME/lbsync/{}, used if it exists]",
                program.config_file
            ))
        });
    let mut cmd = crate::env::apply(cmd);
    let mut used = None;
    if let Some((file, must_exist)) = config_file(program, args, env)
        && let Some(table) = config::load(&file, must_exist)?
    {
        cmd = config::apply(cmd, &table, &file)?;
        used = Some(file);
    }
    Ok((cmd, used))
}

/// Parses `args` (the first is the program's name), the environment being `env`.
pub fn try_parse<P: clap::Parser>(
    program: &Program,
    args: Vec<OsString>,
    env: Env<'_>,
) -> Result<Parsed<P>, Failure> {
    let (command, config) = command::<P>(program, &args, env).map_err(Failure::Config)?;
    let matches = command
        .clone()
        .try_get_matches_from(args)
        .map_err(Failure::Clap)?;
    let cli = P::from_arg_matches(&matches).map_err(Failure::Clap)?;
    Ok(Parsed {
        cli,
        command,
        config,
    })
}

/// [`try_parse`] with the process's environment; on a failure, says why and exits (status 2).
pub fn parse<P: clap::Parser>(program: &Program, args: Vec<OsString>) -> Parsed<P> {
    try_parse(program, args, &crate::dirs::process_env).unwrap_or_else(|f| f.exit(program.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    #[command(version)]
    struct Cli {
        #[command(flatten)]
        common: crate::Common,
        #[arg(long, global = true)]
        server: Option<String>,
        #[arg(long, default_value_t = 7)]
        max: u64,
        #[command(subcommand)]
        cmd: Option<Sub>,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Sub {
        Watch {
            #[arg(long, default_value_t = 75)]
            debounce_ms: u64,
        },
    }

    const P: Program = Program {
        name: "prog",
        version: "1.2.3",
        config_file: "prog.toml",
    };

    fn run(
        args: &[&str],
        vars: &[(&str, &str)],
        file: Option<&str>,
    ) -> Result<Parsed<Cli>, Failure> {
        let dir = tempfile::tempdir().expect("tempdir");
        if let Some(text) = file {
            std::fs::create_dir_all(dir.path().join("lbsync")).expect("mkdir");
            std::fs::write(dir.path().join("lbsync/prog.toml"), text).expect("write");
        }
        let home = dir.path().as_os_str().to_owned();
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let env = move |k: &str| {
            if k == "XDG_CONFIG_HOME" {
                return Some(home.clone());
            }
            vars.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| OsString::from(v))
        };
        // clap reads the variables it was given names for from the process; none of these
        // LBSYNC_TEST_* exist there, so the layering tested here is the file's over defaults,
        // and the variable names are checked on the command.
        let args = std::iter::once("prog")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        try_parse(&P, args, &env)
    }

    #[test]
    fn the_file_beats_defaults_and_the_command_line_beats_the_file() {
        let p = run(&[], &[], None).expect("parse");
        assert_eq!(p.cli.max, 7);
        assert!(p.config.is_none());
        let file = "max = 9\nserver = \"http://f\"\n[watch]\ndebounce_ms = 5\n";
        let p = run(&["watch"], &[], Some(file)).expect("parse");
        assert_eq!(p.cli.max, 9);
        assert_eq!(p.cli.server.as_deref(), Some("http://f"));
        assert!(matches!(p.cli.cmd, Some(Sub::Watch { debounce_ms: 5 })));
        let p = run(
            &["--max", "1", "watch", "--debounce-ms", "2"],
            &[],
            Some(file),
        )
        .expect("parse");
        assert_eq!(p.cli.max, 1);
        assert!(matches!(p.cli.cmd, Some(Sub::Watch { debounce_ms: 2 })));
    }

    #[test]
    fn every_option_has_a_variable_and_the_version_names_the_protocol() {
        let (mut cmd, _) = command::<Cli>(&P, &[], &|_| None).expect("command");
        cmd.build();
        let env = |c: &clap::Command, id: &str| {
            c.get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(env(&cmd, "max").as_deref(), Some("LBSYNC_MAX"));
        assert_eq!(env(&cmd, "config").as_deref(), Some("LBSYNC_CONFIG"));
        assert_eq!(env(&cmd, "verbose").as_deref(), Some("LBSYNC_VERBOSE"));
        let w = cmd.find_subcommand("watch").expect("watch");
        assert_eq!(
            env(w, "debounce_ms").as_deref(),
            Some("LBSYNC_WATCH_DEBOUNCE_MS")
        );
        assert!(cmd.render_version().contains(&format!(
            "prog 1.2.3 (protocol {})",
            lbsync_proto::PROTOCOL_VERSION
        )));
    }

    #[test]
    fn a_named_config_file_must_exist_and_a_bad_key_is_a_config_error() {
        let missing = run(&["--config", "/nonexistent/x.toml"], &[], None).expect_err("missing");
        assert!(matches!(missing, Failure::Config(_)));
        let bad = run(&[], &[], Some("nope = 1")).expect_err("bad key");
        let Failure::Config(e) = bad else {
            panic!("not a config error")
        };
        assert_eq!(e.key, "nope");
        let via_env = run(&[], &[("LBSYNC_CONFIG", "/nonexistent/y.toml")], None);
        assert!(matches!(via_env, Err(Failure::Config(_))));
    }
}
