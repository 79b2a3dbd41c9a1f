//! The XDG base directories: `$XDG_CONFIG_HOME` (else `~/.config`), `$XDG_DATA_HOME` (else
//! `~/.local/share`), `$XDG_STATE_HOME` (else `~/.local/state`), `$XDG_CACHE_HOME` (else
//! `~/.cache`). A relative `XDG_*` value is ignored, as the specification says.

use std::ffi::OsString;
use std::path::PathBuf;

/// The environment these directories are read from; a function so that tests need not change
/// the process's environment.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// The process's own environment.
pub fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

fn base(env: Env<'_>, var: &str, under_home: &str) -> Option<PathBuf> {
    if let Some(v) = env(var).map(PathBuf::from).filter(|p| p.is_absolute()) {
        return Some(v);
    }
    env("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(under_home))
}

/// `$XDG_CONFIG_HOME/lbsync`.
pub fn config(env: Env<'_>) -> Option<PathBuf> {
    base(env, "XDG_CONFIG_HOME", ".config").map(|d| d.join("lbsync"))
}

/// `$XDG_DATA_HOME/lbsync`.
pub fn data(env: Env<'_>) -> Option<PathBuf> {
    base(env, "XDG_DATA_HOME", ".local/share").map(|d| d.join("lbsync"))
}

/// `$XDG_STATE_HOME/lbsync`.
pub fn state(env: Env<'_>) -> Option<PathBuf> {
    base(env, "XDG_STATE_HOME", ".local/state").map(|d| d.join("lbsync"))
}

/// `$XDG_CACHE_HOME/lbsync`.
pub fn cache(env: Env<'_>) -> Option<PathBuf> {
    base(env, "XDG_CACHE_HOME", ".cache").map(|d| d.join("lbsync"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn xdg_variables_win_over_home_and_relative_ones_are_ignored() {
        let e = env_of(&[("HOME", "/home/a"), ("XDG_DATA_HOME", "/data")]);
        assert_eq!(data(&e), Some(PathBuf::from("/data/lbsync")));
        assert_eq!(config(&e), Some(PathBuf::from("/home/a/.config/lbsync")));
        assert_eq!(
            state(&e),
            Some(PathBuf::from("/home/a/.local/state/lbsync"))
        );
        assert_eq!(cache(&e), Some(PathBuf::from("/home/a/.cache/lbsync")));
        let e = env_of(&[("HOME", "/home/a"), ("XDG_CONFIG_HOME", "rel")]);
        assert_eq!(config(&e), Some(PathBuf::from("/home/a/.config/lbsync")));
        let e = env_of(&[]);
        assert_eq!(data(&e), None);
    }
}
