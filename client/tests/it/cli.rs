//! The real `lbsync-client` binary: commands and errors (kill -9 in the middle of transfers is in
//! `faults`).

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::path::Path;

use crate::util::*;

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
        text(&out).contains("uploaded notes.txt: 1 of 1 chunk new"),
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
    assert_eq!(out.status.code(), Some(2), "a usage error: {}", text(&out));
    assert!(text(&out).contains("bad server URL"), "{}", text(&out));
    let out = run(args(&["sync", d, "--no-such-option"])).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = run(args(&["--help"])).await;
    assert!(
        text(&out).contains("3 finished, but some paths are pending"),
        "{}",
        text(&out)
    );
    let out = run(args(&["sync", "/definitely/not/here"])).await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("/definitely/not/here"),
        "{}",
        text(&out)
    );
}

/// `undelete` on another device undoes one deletion event (an `rm -rf` of 20 files and their
/// directory) everywhere, and leaves an older deletion alone unless `--since` reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelete_brings_back_a_deletion_event_everywhere() {
    let server = Server::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (pa, pb) = (a.path(), b.path());
    let (a, b) = (pa.to_str().unwrap(), pb.to_str().unwrap());
    for i in 0..100 {
        write(pa, &format!("keep/{i}.txt"), format!("kept {i}"));
    }
    for i in 0..20 {
        write(pa, &format!("proj/{i}.txt"), format!("project file {i}"));
    }
    write(pa, "old.txt", "deleted earlier");
    let sync =
        |dir: &str, device: &str| args(&["sync", dir, "--server", &server.url, "--device", device]);
    for (dir, device) in [(a, "laptop"), (b, "desktop")] {
        let out = run(sync(dir, device)).await;
        assert!(out.status.success(), "{}", text(&out));
    }
    let everything = tree(pa);
    let before_old = chrono::Utc::now().to_rfc3339();
    std::fs::remove_file(pb.join("old.txt")).unwrap();
    let out = run(sync(b, "desktop")).await;
    assert!(out.status.success(), "{}", text(&out));

    std::fs::remove_dir_all(pa.join("proj")).unwrap();
    for (dir, device) in [(a, "laptop"), (b, "desktop")] {
        let out = run(sync(dir, device)).await;
        assert!(out.status.success(), "{}", text(&out));
    }
    assert!(!pb.join("proj").exists());

    let out = run(args(&["undelete", b])).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        // "at T", or "between T1 and T2" when the deletion's commits crossed a second.
        text(&out).contains("restored 20 files and 1 directory deleted by laptop "),
        "{}",
        text(&out)
    );
    let out = run(sync(a, "laptop")).await;
    assert!(out.status.success(), "{}", text(&out));
    for dir in [pa, pb] {
        for i in 0..20 {
            assert_eq!(
                std::fs::read_to_string(dir.join(format!("proj/{i}.txt"))).unwrap(),
                format!("project file {i}")
            );
        }
        assert!(!dir.join("old.txt").exists(), "not part of the event");
    }

    // The desktop's earlier deletion was another event; `--since` with a path reaches it.
    let out = run(args(&["undelete", a, "--since", &before_old, "old.txt"])).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("restored 1 file deleted by desktop "),
        "{}",
        text(&out)
    );
    let out = run(sync(b, "desktop")).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(tree(pa), everything);
    assert_eq!(tree(pb), everything);
    let out = run(args(&["undelete", a, "--since", "not a time"])).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("RFC 3339"), "{}", text(&out));
    server.stop().await;
}

/// Completion scripts and man pages come from the command line's own definition.
#[tokio::test]
async fn completions_and_man_pages_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(args(&["completions", shell])).await;
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("undelete"), "{shell}: {}", text(&out));
    }
    let out = run(args(&["completions", "tcsh-of-the-future"])).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let dir = tempfile::tempdir().unwrap();
    let out = run(args(&["man", dir.path().to_str().unwrap()])).await;
    assert!(out.status.success(), "{}", text(&out));
    for page in [
        "lbsync-client.1",
        "lbsync-client-sync.1",
        "lbsync-client-watch.1",
    ] {
        let man = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(man.contains(".TH"), "{page}: {man}");
    }
}
