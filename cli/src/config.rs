//! The config file: TOML whose values become the options' defaults, so that clap's own
//! precedence puts them below the command line and the `LBSYNC_*` variables, and above the
//! built-in defaults. Nothing here knows an option by name: every option of the `Command` gets
//! it.
//!
//! Keys are the options' long names, with `_` or `-` between words. The top level holds the
//! program's own options (the global ones too); a subcommand's options go in a table named
//! after it, nested for nested subcommands:
//!
//! ```toml
//! server = "https://sync.example.org:7700"
//! token_file = "/home/ann/.config/lbsync/token"
//!
//! [watch]
//! debounce_ms = 100
//!
//! [token.create]
//! read_only = true
//! ```
//!
//! A flag takes `true` or `false`, `-v`'s count (`verbose`) an integer, an option that may be
//! given many times an array. A key that names no option, a value of the wrong type, or one the
//! option refuses is an error naming the file, the key and what is allowed.

use std::path::{Path, PathBuf};

use clap::{ArgAction, Command};

/// A config file that cannot be used: the program stops with exit status 2.
#[derive(Debug)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The key, dotted (`watch.debounce_ms`); empty for the whole file.
    pub key: String,
    /// What is wrong, and what is allowed.
    pub problem: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "config file {}: {}", self.file.display(), self.problem)
        } else {
            write!(
                f,
                "config file {}: key `{}`: {}",
                self.file.display(),
                self.key,
                self.problem
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads and parses the file; `Ok(None)` when it does not exist and `must_exist` is false (the
/// default file is optional, one named by `--config` or `LBSYNC_CONFIG` is not).
pub fn load(file: &Path, must_exist: bool) -> Result<Option<toml::Table>, ConfigError> {
    let err = |problem: String| ConfigError {
        file: file.to_path_buf(),
        key: String::new(),
        problem,
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => return Ok(None),
        Err(e) => return Err(err(format!("cannot be read: {e}"))),
    };
    text.parse::<toml::Table>()
        .map(Some)
        .map_err(|e| err(format!("is not valid TOML: {}", e.to_string().trim_end())))
}

/// The key an option has in the file.
pub fn key_of(long: &str) -> String {
    long.replace('-', "_")
}

/// Makes the file's values the defaults of `cmd`'s options.
pub fn apply(cmd: Command, table: &toml::Table, file: &Path) -> Result<Command, ConfigError> {
    walk(cmd, table, file, &mut Vec::new())
}

fn walk(
    mut cmd: Command,
    table: &toml::Table,
    file: &Path,
    path: &mut Vec<String>,
) -> Result<Command, ConfigError> {
    for (key, value) in table {
        let dotted = path
            .iter()
            .cloned()
            .chain(std::iter::once(key.clone()))
            .collect::<Vec<_>>()
            .join(".");
        let err = |problem: String| ConfigError {
            file: file.to_path_buf(),
            key: dotted.clone(),
            problem,
        };
        let wanted = key_of(key);
        let arg = cmd
            .get_arguments()
            .filter(|a| crate::env::settable(a))
            .find(|a| a.get_long().map(key_of).as_deref() == Some(wanted.as_str()))
            .cloned();
        if let Some(arg) = arg {
            let values = values_of(&arg, value).map_err(&err)?;
            check(&arg, &values).map_err(&err)?;
            let id = arg.get_id().to_string();
            cmd = cmd.mut_arg(&id, |a| {
                // A required option the file gives is no longer required on the command line.
                a.required(false).default_values(values)
            });
            continue;
        }
        let sub = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .find(|n| key_of(n) == wanted);
        match (sub, value) {
            (Some(sub), toml::Value::Table(t)) => {
                path.push(sub.clone());
                let mut result = Ok(());
                cmd = cmd.mut_subcommand(&sub, |s| match walk(s.clone(), t, file, path) {
                    Ok(s) => s,
                    Err(e) => {
                        result = Err(e);
                        s
                    }
                });
                path.pop();
                result?;
            }
            (Some(sub), _) => {
                return Err(err(format!(
                    "`{sub}` is a command: its options go in a table, [{}]",
                    path.iter()
                        .cloned()
                        .chain(std::iter::once(sub.clone()))
                        .collect::<Vec<_>>()
                        .join(".")
                )));
            }
            (None, _) => {
                return Err(err(format!(
                    "no such option{}; allowed here: {}",
                    if path.is_empty() {
                        String::new()
                    } else {
                        format!(" in [{}]", path.join("."))
                    },
                    allowed(&cmd)
                )));
            }
        }
    }
    Ok(cmd)
}

/// The keys and tables allowed at this level, for an error message.
fn allowed(cmd: &Command) -> String {
    let mut keys: Vec<String> = cmd
        .get_arguments()
        .filter(|a| crate::env::settable(a))
        .filter_map(|a| a.get_long().map(key_of))
        .collect();
    keys.extend(
        cmd.get_subcommands()
            .filter(|s| s.get_name() != "help")
            .map(|s| format!("[{}]", s.get_name())),
    );
    keys.join(", ")
}

fn multiple(arg: &clap::Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
        || arg.get_num_args().is_some_and(|n| n.max_values() > 1)
}

/// The value as the strings clap would have had on the command line.
fn values_of(arg: &clap::Arg, value: &toml::Value) -> Result<Vec<String>, String> {
    use toml::Value as V;
    let scalar = |v: &V| match v {
        V::String(s) => Some(s.clone()),
        V::Integer(i) => Some(i.to_string()),
        V::Float(f) => Some(f.to_string()),
        V::Boolean(b) => Some(b.to_string()),
        _ => None,
    };
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => match value {
            V::Boolean(b) => Ok(vec![b.to_string()]),
            _ => Err(format!("expects true or false, not {}", value.type_str())),
        },
        ArgAction::Count => match value {
            V::Integer(i) if (0..=255).contains(i) => Ok(vec![i.to_string()]),
            _ => Err(format!(
                "expects a count from 0 to 255, not {}",
                describe(value)
            )),
        },
        _ => match value {
            V::Array(items) if multiple(arg) => items
                .iter()
                .map(|v| {
                    scalar(v).ok_or_else(|| {
                        format!("expects an array of values, not of {}", v.type_str())
                    })
                })
                .collect(),
            V::Array(_) => Err("takes one value, not an array".into()),
            v => scalar(v)
                .map(|s| vec![s])
                .ok_or_else(|| format!("expects a value, not {}", v.type_str())),
        },
    }
}

fn describe(v: &toml::Value) -> String {
    match v {
        toml::Value::Integer(i) => i.to_string(),
        v => v.type_str().to_owned(),
    }
}

/// Runs the option's own value parser over the values, so that a bad value is reported as the
/// file's, not as a command-line mistake nobody made.
fn check(arg: &clap::Arg, values: &[String]) -> Result<(), String> {
    let probe = clap::Arg::new("value")
        .long("value")
        .value_parser(arg.get_value_parser().clone())
        .action(ArgAction::Append)
        .num_args(1)
        .allow_hyphen_values(true);
    let args = std::iter::once("lbsync".to_owned()).chain(
        values
            .iter()
            .flat_map(|v| ["--value".to_owned(), v.clone()]),
    );
    match Command::new("lbsync").arg(probe).try_get_matches_from(args) {
        Ok(_) => Ok(()),
        Err(e) => {
            use clap::error::{ContextKind, ContextValue};
            let mut why = match e.get(ContextKind::InvalidValue) {
                Some(ContextValue::String(v)) => format!("invalid value {v:?}"),
                _ => "invalid value".to_owned(),
            };
            if let Some(ContextValue::Strings(ok)) = e.get(ContextKind::ValidValue) {
                why.push_str(&format!("; allowed: {}", ok.join(", ")));
            } else {
                let text = e.render().to_string();
                if let Some(detail) = text
                    .lines()
                    .next()
                    .and_then(|l| l.split_once("': ").map(|(_, d)| d.trim().to_owned()))
                {
                    why.push_str(&format!(": {detail}"));
                }
            }
            Err(why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Arg;

    fn cmd() -> Command {
        Command::new("p")
            .arg(Arg::new("server").long("server"))
            .arg(
                Arg::new("max")
                    .long("max-deletes")
                    .value_parser(clap::value_parser!(u64)),
            )
            .arg(Arg::new("force").long("force").action(ArgAction::SetTrue))
            .arg(
                Arg::new("fmt")
                    .long("log-format")
                    .value_parser(["text", "json"]),
            )
            .subcommand(
                Command::new("watch").arg(
                    Arg::new("debounce")
                        .long("debounce-ms")
                        .value_parser(clap::value_parser!(u64))
                        .default_value("75"),
                ),
            )
    }

    fn table(s: &str) -> toml::Table {
        s.parse().expect("toml")
    }

    #[test]
    fn file_values_become_defaults_below_the_command_line() {
        let t = table("server = \"http://a\"\nforce = true\n[watch]\ndebounce_ms = 100\n");
        let c = apply(cmd(), &t, Path::new("f.toml")).expect("apply");
        let m = c
            .clone()
            .try_get_matches_from(["p", "watch"])
            .expect("parse");
        assert_eq!(
            m.get_one::<String>("server").map(String::as_str),
            Some("http://a")
        );
        assert!(m.get_flag("force"));
        let w = m.subcommand_matches("watch").expect("watch");
        assert_eq!(w.get_one::<u64>("debounce"), Some(&100));
        let m = c
            .try_get_matches_from(["p", "--server", "http://b", "watch", "--debounce-ms", "5"])
            .expect("parse");
        assert_eq!(
            m.get_one::<String>("server").map(String::as_str),
            Some("http://b")
        );
        let w = m.subcommand_matches("watch").expect("watch");
        assert_eq!(w.get_one::<u64>("debounce"), Some(&5));
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_file_the_key_and_what_is_allowed() {
        let e = apply(cmd(), &table("sever = \"x\""), Path::new("/c/f.toml")).expect_err("bad");
        let s = e.to_string();
        assert!(s.contains("/c/f.toml") && s.contains("`sever`"), "{s}");
        assert!(s.contains("server") && s.contains("[watch]"), "{s}");
        let e = apply(cmd(), &table("[watch]\ndebounce = 1"), Path::new("f")).expect_err("bad");
        assert!(e.to_string().contains("`watch.debounce`"), "{e}");
        assert!(e.to_string().contains("debounce_ms"), "{e}");
        let e = apply(cmd(), &table("force = \"yes\""), Path::new("f")).expect_err("bad");
        assert!(e.to_string().contains("true or false"), "{e}");
        let e = apply(cmd(), &table("max_deletes = \"many\""), Path::new("f")).expect_err("bad");
        assert!(e.to_string().contains("\"many\""), "{e}");
        let e = apply(cmd(), &table("log_format = \"xml\""), Path::new("f")).expect_err("bad");
        assert!(e.to_string().contains("text, json"), "{e}");
        let e = apply(cmd(), &table("watch = 3"), Path::new("f")).expect_err("bad");
        assert!(e.to_string().contains("[watch]"), "{e}");
    }

    #[test]
    fn a_missing_file_is_fine_only_when_it_was_not_asked_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("none.toml");
        assert!(load(&f, false).expect("optional").is_none());
        assert!(load(&f, true).is_err());
        std::fs::write(&f, "a = ").expect("write");
        let e = load(&f, false).expect_err("bad toml");
        assert!(e.to_string().contains("not valid TOML"), "{e}");
    }
}
