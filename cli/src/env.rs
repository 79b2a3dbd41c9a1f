//! Every option is also an `LBSYNC_*` variable, given to clap as the option's `env`, so that
//! `--help` shows it and clap's own precedence (command line, then variable) applies.
//!
//! The name is `LBSYNC_` and the option's long name in capitals with `_` for `-`; an option of
//! a subcommand has the subcommand's name in front (`watch --debounce-ms` is
//! `LBSYNC_WATCH_DEBOUNCE_MS`, `token create --user` is `LBSYNC_TOKEN_CREATE_USER`), so that two
//! subcommands' options of one name (`--force`, `--read-only`) never share a variable. An
//! option that names its variable already (`LBSYNC_STORE`, `LBSYNC_TOKEN_FILE`) keeps it.
//! Positional arguments, `--help` and `--version` have none.

use clap::{ArgAction, Command};

/// The variable for an option with this long name, under these subcommands.
pub fn name(path: &[&str], long: &str) -> String {
    let mut n = String::from("LBSYNC");
    for part in path.iter().copied().chain(std::iter::once(long)) {
        n.push('_');
        n.push_str(&part.to_ascii_uppercase().replace('-', "_"));
    }
    n
}

/// True for the arguments an option file or variable may set.
pub(crate) fn settable(arg: &clap::Arg) -> bool {
    !arg.is_positional()
        && arg.get_long().is_some()
        && !matches!(
            arg.get_action(),
            ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
        )
}

/// Gives every option of `cmd` and its subcommands its variable.
pub fn apply(cmd: Command) -> Command {
    walk(cmd, &mut Vec::new())
}

fn walk(mut cmd: Command, path: &mut Vec<String>) -> Command {
    let ids: Vec<String> = cmd
        .get_arguments()
        .filter(|a| settable(a) && a.get_env().is_none())
        .map(|a| a.get_id().to_string())
        .collect();
    let parts: Vec<&str> = path.iter().map(String::as_str).collect();
    for id in ids {
        cmd = cmd.mut_arg(&id, |a| {
            let long = a.get_long().unwrap_or(id.as_str()).to_owned();
            let a = a.env(name(&parts, &long));
            match a.get_action() {
                // "1", "yes", "on" as well as "true".
                ArgAction::SetTrue | ArgAction::SetFalse => {
                    a.value_parser(clap::builder::BoolishValueParser::new())
                }
                _ => a,
            }
        });
    }
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .filter(|n| n != "help")
        .collect();
    for sub in subs {
        cmd = cmd.mut_subcommand(&sub, |s| {
            path.push(sub.clone());
            let s = walk(s, path);
            path.pop();
            s
        });
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Arg;

    #[test]
    fn names_carry_the_subcommands_and_existing_ones_stay() {
        assert_eq!(name(&["watch"], "debounce-ms"), "LBSYNC_WATCH_DEBOUNCE_MS");
        assert_eq!(name(&[], "server"), "LBSYNC_SERVER");
        let cmd = Command::new("x")
            .arg(Arg::new("store").long("store").env("LBSYNC_STORE"))
            .arg(Arg::new("listen").long("listen"))
            .arg(Arg::new("dir"))
            .subcommand(
                Command::new("gc").arg(Arg::new("dry").long("dry-run").action(ArgAction::SetTrue)),
            );
        let mut cmd = apply(cmd);
        cmd.build();
        let env = |c: &Command, id: &str| {
            c.get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(env(&cmd, "store").as_deref(), Some("LBSYNC_STORE"));
        assert_eq!(env(&cmd, "listen").as_deref(), Some("LBSYNC_LISTEN"));
        assert_eq!(env(&cmd, "dir"), None);
        let gc = cmd.find_subcommand("gc").expect("gc");
        assert_eq!(env(gc, "dry").as_deref(), Some("LBSYNC_GC_DRY_RUN"));
    }
}
