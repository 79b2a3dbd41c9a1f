//! The real `lbsync-client` binary and the command-line conventions it shares with the server
//! (lbsync-cli): `--json`, exit codes, config file and `LBSYNC_*` precedence, version, colour,
//! and `restore` over an edit that was never synced.

#![allow(clippy::unwrap_used)] // tests: a failure is a test failure

use std::path::Path;

use crate::util::*;

/// A port nothing listens on: bound, then freed.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_for_sync_status_history_and_restore() {
    let server = Server::start().await;
    let a = tempfile::tempdir().unwrap();
    let a = a.path().to_str().unwrap();
    write(Path::new(a), "notes.txt", "first");
    let out = run(args(&["sync", a, "--server", &server.url, "--json"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["in_sync"], true);
    assert_eq!(v["uploaded"], 1);
    assert!(v["bytes_sent"].as_u64().unwrap() > 0, "{v}");
    assert!(v["pending"].as_array().unwrap().is_empty(), "{v}");
    write(Path::new(a), "notes.txt", "second");
    let out = run(args(&["sync", a, "--json"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let out = run(args(&["history", &format!("{a}/notes.txt"), "--json"])).await;
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["path"], "notes.txt");
    let versions = v["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{v}");
    for e in versions {
        let when = e["committed"].as_str().unwrap();
        assert!(when.ends_with('Z'), "{when}");
        chrono::DateTime::parse_from_rfc3339(when).unwrap();
        assert!(e["size"].is_u64() && e["version"].is_u64(), "{e}");
    }

    let out = run(args(&["status", a, "--json"])).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    chrono::DateTime::parse_from_rfc3339(v["last_sync"].as_str().unwrap()).unwrap();
    assert!(v["pending"].is_array() && v["bytes_sent"].is_u64(), "{v}");

    let out = run(args(&[
        "restore",
        &format!("{a}/notes.txt"),
        "--version",
        "1",
        "--json",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["restored_as"], 3);
    assert!(v["kept_local_edit_as"].is_null(), "{v}");
    assert_eq!(v["sync"]["in_sync"], true);
    server.stop().await;
}

/// Safety rule 1: the restored version does not overwrite an edit nobody synced; the edit is
/// kept, visibly, as a conflicted copy that reaches the server, and the output says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_over_an_unsynced_edit_keeps_the_edit() {
    let server = Server::start().await;
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (a, b) = (a.path().to_str().unwrap(), b.path().to_str().unwrap());
    write(Path::new(a), "notes.txt", "first");
    let out = run(args(&["sync", a, "--server", &server.url])).await;
    assert!(out.status.success(), "{}", text(&out));
    write(Path::new(a), "notes.txt", "second");
    let out = run(args(&["sync", a])).await;
    assert!(out.status.success(), "{}", text(&out));
    write(Path::new(a), "notes.txt", "my unsynced edit");
    let out = run(args(&[
        "restore",
        &format!("{a}/notes.txt"),
        "--version",
        "1",
    ]))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("had a local edit that was never synced: it is kept as"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(format!("{a}/notes.txt")).unwrap(),
        "first"
    );
    let kept: Vec<_> = tree(Path::new(a))
        .into_keys()
        .filter(|p| p.contains("conflicted copy"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        std::fs::read_to_string(Path::new(a).join(&kept[0])).unwrap(),
        "my unsynced edit"
    );
    // The copy went to the server: another device gets it.
    let out = run(args(&["sync", b, "--server", &server.url])).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(Path::new(b).join(&kept[0])).unwrap(),
        "my unsynced edit"
    );
    server.stop().await;
}

/// `--server` from the flag over `LBSYNC_SERVER` over the config file: the failure to connect
/// names the one used (exit 1, fatal). A bad key is a usage error (2).
#[tokio::test]
async fn flag_beats_env_beats_config_file_and_bad_keys_exit_2() {
    let xdg = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let x = xdg.path().to_str().unwrap();
    let (pf, pe, pc) = (free_port(), free_port(), free_port());
    std::fs::create_dir_all(xdg.path().join("lbsync")).unwrap();
    let file = xdg.path().join("lbsync/client.toml");
    std::fs::write(&file, format!("server = \"http://127.0.0.1:{pf}\"\n")).unwrap();
    let base = [("XDG_CONFIG_HOME", x)];
    let used = |o: &std::process::Output, port: u16| {
        text(o).contains(&format!(
            "cannot reach the server at http://127.0.0.1:{port}"
        ))
    };
    let out = run_env(args(&["sync", d]), &base).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(used(&out, pf), "{}", text(&out));
    let env_url = format!("http://127.0.0.1:{pe}");
    let with_env = [("XDG_CONFIG_HOME", x), ("LBSYNC_SERVER", env_url.as_str())];
    let out = run_env(args(&["sync", d]), &with_env).await;
    assert!(used(&out, pe), "{}", text(&out));
    let flag = format!("http://127.0.0.1:{pc}");
    let out = run_env(args(&["sync", d, "--server", &flag]), &with_env).await;
    assert!(used(&out, pc), "{}", text(&out));
    // Nothing on stdout or stderr is coloured when they are not terminals, or with NO_COLOR.
    assert!(!text(&out).contains('\u{1b}'), "{:?}", text(&out));
    let out = run_env(
        args(&["sync", d]),
        &[("XDG_CONFIG_HOME", x), ("NO_COLOR", "1")],
    )
    .await;
    assert!(!text(&out).contains('\u{1b}'), "{:?}", text(&out));

    std::fs::write(&file, "[watch]\ndebounce = 5\n").unwrap();
    let out = run_env(args(&["status", d]), &base).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains(file.to_str().unwrap()), "{t}");
    assert!(
        t.contains("`watch.debounce`") && t.contains("debounce_ms"),
        "{t}"
    );
    std::fs::write(&file, "max_deletes = \"lots\"\n").unwrap();
    let out = run_env(args(&["status", d]), &base).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = run_env(args(&["--config", "/no/such.toml", "status", d]), &base).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // The default file may be missing.
    std::fs::remove_file(&file).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let out = run_env(args(&["status", fresh.path().to_str().unwrap()]), &base).await;
    assert_eq!(out.status.code(), Some(1), "never synced: {}", text(&out));
}

#[tokio::test]
async fn version_names_the_protocol_and_every_shell_gets_completions() {
    let out = run(args(&["--version"])).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "lbsync-client {} (protocol {})",
            env!("CARGO_PKG_VERSION"),
            lbsync_proto::PROTOCOL_VERSION
        )
    );
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run(args(&["completions", shell])).await;
        assert!(out.status.success(), "{shell}: {}", text(&out));
        assert!(text(&out).contains("restore"), "{shell}");
    }
    let out = run(args(&["--help"])).await;
    assert!(text(&out).contains("LBSYNC_SERVER"), "{}", text(&out));
    let out = run(args(&["watch", "--help"])).await;
    assert!(
        text(&out).contains("LBSYNC_WATCH_DEBOUNCE_MS"),
        "{}",
        text(&out)
    );
}
