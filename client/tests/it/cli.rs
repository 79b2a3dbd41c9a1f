//! The real `lbsync-client` binary: commands, errors, and kill -9 in the middle of transfers.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::path::Path;
use std::process::{Command, Output, Stdio};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_upload_and_download_loses_nothing_and_shows_no_partial_file() {
    let server = Server::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    write(a, "small.txt", "small");
    sync(a, &server, "a").await;
    let data = seeded(120 << 20, 3);
    write(a, "large.bin", &data);

    // Kill during the upload: once the client has sent some of the file's chunks.
    let spawn = |dir: &Path, dev: &str| {
        Command::new(BIN)
            .args([
                "sync",
                dir.to_str().unwrap(),
                "--server",
                &server.url,
                "--device",
                dev,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let stored_before = stored_bytes(&server);
    let mut child = spawn(a, "a");
    until(60, "part of the upload to arrive", || {
        stored_bytes(&server) > stored_before + (16 << 20)
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        std::fs::read(a.join("large.bin")).unwrap(),
        data,
        "the source is untouched"
    );
    let r = sync(a, &server, "a").await;
    assert!(r.in_sync(), "{r:?}");
    assert!(
        r.chunks_sent < (120 << 20) / 8192,
        "chunks stored before the kill are not sent again: {r:?}"
    );

    // Kill during the download: once a partial file exists in .lbsync/tmp.
    sync(b, &server, "b").await; // b gets small.txt first; large.bin too if the kill misses
    std::fs::remove_file(b.join("large.bin")).ok();
    // Make b forget large.bin so that the next sync downloads it again.
    let mut st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join(".lbsync/state.json")).unwrap())
            .unwrap();
    st["files"].as_object_mut().unwrap().remove("large.bin");
    st["cursor"] = 0.into();
    std::fs::write(
        b.join(".lbsync/state.json"),
        serde_json::to_vec(&st).unwrap(),
    )
    .unwrap();
    let mut child = spawn(b, "b");
    let tmp = b.join(".lbsync/tmp");
    let target = b.join("large.bin");
    until(60, "a partial download", || {
        std::fs::read_dir(&tmp)
            .map(|d| d.count() > 0)
            .unwrap_or(false)
            || target.exists()
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    if target.exists() {
        assert_eq!(
            std::fs::read(&target).unwrap(),
            data,
            "a file at a synced path is never partial"
        );
    }
    let r = sync(b, &server, "b").await;
    assert!(r.in_sync(), "{r:?}");
    assert_eq!(std::fs::read(&target).unwrap(), data);
    converge(&[a, b], &server).await;
    assert_eq!(tree(a), tree(b));
}
