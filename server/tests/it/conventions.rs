//! The real `lbsync-server` binary and the command-line conventions it shares with the client
//! (lbsync-cli): version, config file and `LBSYNC_*` precedence, completions, man pages, colour.

#![allow(clippy::unwrap_used)] // tests: a failure is a test failure

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_lbsync-server");

/// Runs the binary with a config home of its own (so the tester's config file never counts).
fn run(xdg: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("XDG_CONFIG_HOME", xdg)
        .env_remove("LBSYNC_STORE")
        .env_remove("LBSYNC_CONFIG")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn version_names_the_protocol() {
    let xdg = tempfile::tempdir().unwrap();
    let out = run(xdg.path(), &["--version"], &[]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "lbsync-server {} (protocol {})",
            env!("CARGO_PKG_VERSION"),
            lbsync_proto::PROTOCOL_VERSION
        )
    );
}

/// `init` makes the store where `--store` points, which shows which one won: the flag over
/// `LBSYNC_STORE` over the config file.
#[test]
fn flag_beats_env_beats_config_file() {
    let xdg = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let store = |n: &str| d.path().join(n);
    std::fs::create_dir_all(xdg.path().join("lbsync")).unwrap();
    std::fs::write(
        xdg.path().join("lbsync/server.toml"),
        format!("store = {:?}\n", store("file").to_str().unwrap()),
    )
    .unwrap();
    let made = |n: &str| store(n).is_dir();
    let out = run(xdg.path(), &["init"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(made("file"));
    let env_store = store("env");
    let env = [("LBSYNC_STORE", env_store.to_str().unwrap())];
    let out = run(xdg.path(), &["init"], &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(made("env"));
    let flag = store("flag");
    let out = run(
        xdg.path(),
        &["init", "--store", flag.to_str().unwrap()],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(made("flag"));
    let out = run(
        xdg.path(),
        &["cert", "--store", flag.to_str().unwrap()],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    // A subcommand's option from its table: `cert --force` lets a second cert replace the first.
    let out = run(
        xdg.path(),
        &["cert", "--store", flag.to_str().unwrap()],
        &[],
    );
    assert!(!out.status.success(), "{}", text(&out));
    std::fs::write(
        xdg.path().join("lbsync/server.toml"),
        "[cert]\nforce = true\n",
    )
    .unwrap();
    let out = run(
        xdg.path(),
        &["cert", "--store", flag.to_str().unwrap()],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_bad_config_file_is_a_usage_error_naming_file_and_key() {
    let xdg = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(xdg.path().join("lbsync")).unwrap();
    let file = xdg.path().join("lbsync/server.toml");
    std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap();
    let out = run(xdg.path(), &["stats"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(file.to_str().unwrap()) && t.contains("`lisen`"),
        "{t}"
    );
    assert!(t.contains("listen"), "the allowed keys: {t}");
    std::fs::write(&file, "listen = 7\n").unwrap();
    let out = run(xdg.path(), &["stats"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("invalid value"), "{}", text(&out));
    let out = run(
        xdg.path(),
        &["--config", "/no/such/file.toml", "stats"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn completions_for_every_shell_and_man_pages() {
    let xdg = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run(xdg.path(), &["completions", shell], &[]);
        assert!(out.status.success(), "{shell}: {}", text(&out));
        assert!(text(&out).contains("fsck"), "{shell}: {}", text(&out));
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run(xdg.path(), &["man", dir.path().to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out));
    for page in [
        "lbsync-server.1",
        "lbsync-server-fsck.1",
        "lbsync-server-gc.1",
    ] {
        let man = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(man.contains(".TH"), "{page}");
    }
}

/// The log written to a pipe (or with NO_COLOR) carries no escape codes, and has the date.
#[test]
fn logs_to_a_pipe_have_no_colour_and_a_date() {
    let xdg = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let s = store.path().join("s");
    // A store made for the first time logs so, on a dated line.
    let out = run(xdg.path(), &["--store", s.to_str().unwrap(), "init"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let log = String::from_utf8_lossy(&out.stderr);
    let dated = log
        .lines()
        .any(|l| l.len() > 10 && chrono::NaiveDate::parse_from_str(&l[..10], "%Y-%m-%d").is_ok());
    assert!(dated, "{log}");
    assert!(!log.contains('\u{1b}'), "{log:?}");
    for env in [&[][..], &[("NO_COLOR", "1")][..]] {
        let out = run(xdg.path(), &["--store", s.to_str().unwrap(), "cert"], env);
        assert!(out.status.success(), "{}", text(&out));
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!log.contains('\u{1b}'), "{log:?}");
        let _ = std::fs::remove_dir_all(s.join("tls"));
    }
    let out = run(
        xdg.path(),
        &[
            "--store",
            s.to_str().unwrap(),
            "--log-format",
            "json",
            "-v",
            "user",
            "list",
        ],
        &[],
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.is_empty(), "the -v log");
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
    }
}
