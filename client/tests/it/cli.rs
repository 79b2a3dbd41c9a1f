//! The real `lbsync-client` binary: commands and errors (kill -9 in the middle of transfers is in
//! `faults`).

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::path::Path;
use std::process::{Command, Output};

use crate::util::*;

const BIN: &str = env!("CARGO_BIN_EXE_lbsync-client");

async fn run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || Command::new(BIN).args(args).output().unwrap())
        .await
        .unwrap()
}

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_syncs_reports_status_history_and_restore() {
    let server = Server::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path().to_str().unwrap(), b.path().to_str().unwrap());
    write(Path::new(a), "notes.txt", "first");
    let out = run(args(&[
        "sync",
        a,
        "--server",
        &server.url,
        "--device",
        "laptop",
    ]))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("uploaded notes.txt: 1 of 1 chunks new"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("sync done: 1 up, 0 down"),
        "{}",
        text(&out)
    );
    write(Path::new(a), "notes.txt", "second");
    // The server URL is remembered in the state.
    let out = run(args(&["sync", a])).await;
    assert!(out.status.success(), "{}", text(&out));

    let out = run(args(&["--server", &server.url, "sync", b])).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("downloaded notes.txt from laptop"),
        "{}",
        text(&out)
    );

    let out = run(args(&["history", &format!("{a}/notes.txt")])).await;
    assert!(
        text(&out).contains("v2") && text(&out).contains("v1"),
        "{}",
        text(&out)
    );
    let out = run(args(&[
        "restore",
        &format!("{b}/notes.txt"),
        "--version",
        "1",
    ]))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(format!("{b}/notes.txt")).unwrap(),
        "first"
    );

    write(Path::new(a), "draft.txt", "unsent");
    let out = run(args(&["status", a, "--json"])).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pending"][0], "new draft.txt");
    assert_eq!(v["folder"], "default");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_or_malformed_server_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = run(args(&[
        "sync",
        d,
        "--server",
        &format!("http://127.0.0.1:{port}"),
    ]))
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("cannot reach the server at http://127.0.0.1:"),
        "{}",
        text(&out)
    );
    let out = run(args(&["sync", d, "--server", "not a url"])).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("bad server URL"), "{}", text(&out));
    let out = run(args(&["sync", "/definitely/not/here"])).await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("/definitely/not/here"),
        "{}",
        text(&out)
    );
}
