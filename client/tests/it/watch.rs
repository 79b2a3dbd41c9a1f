//! Real-time sync: the real `lbsync-client watch` binaries against a server on 127.0.0.1.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::fs;
use std::path::{Path, PathBuf};

use crate::procs::Watcher;
use crate::util::*;

fn read(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok()
}

/// A temp dir holding two empty directories to sync, `a` and `b`.
fn two_dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    (tmp, a, b)
}

/// The two trees are equal (with every path in `expect` present).
async fn same_trees(a: &Path, b: &Path, what: &str) {
    until(60, what, || tree(a) == tree(b)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_flow_both_ways_in_real_time() {
    let server = Server::start().await;
    let (tmp, a, b) = two_dirs();
    let wa = Watcher::start(&a, &server.url, "A");
    let wb = Watcher::start(&b, &server.url, "B");

    write(&a, "hello.txt", "hi");
    until(60, "hello.txt in B", || {
        read(&b.join("hello.txt")).as_deref() == Some("hi")
    })
    .await;
    write(&a, "hello.txt", "hi, edited");
    until(60, "the edit in B", || {
        read(&b.join("hello.txt")).as_deref() == Some("hi, edited")
    })
    .await;

    // A directory tree, created after the watch started.
    write(&a, "tree/sub/deep/x.txt", "x");
    write(&a, "tree/y.txt", "y");
    until(60, "the tree in B", || {
        b.join("tree/sub/deep/x.txt").exists() && b.join("tree/y.txt").exists()
    })
    .await;

    // Renames of a file and a directory.
    fs::rename(a.join("hello.txt"), a.join("renamed.txt")).unwrap();
    fs::rename(a.join("tree/sub"), a.join("tree/moved")).unwrap();
    until(60, "the renames in B", || {
        b.join("renamed.txt").exists()
            && !b.join("hello.txt").exists()
            && b.join("tree/moved/deep/x.txt").exists()
            && !b.join("tree/sub").exists()
    })
    .await;

    // Deletions, from the other side.
    fs::remove_file(b.join("tree/y.txt")).unwrap();
    fs::remove_dir_all(b.join("tree/moved")).unwrap();
    until(60, "the deletions in A", || {
        !a.join("tree/y.txt").exists() && !a.join("tree/moved").exists()
    })
    .await;

    // Edits on both sides converge.
    write(&a, "from-a.txt", "a");
    write(&b, "from-b.txt", "b");
    same_trees(&a, &b, "both edits on both sides").await;
    assert!(a.join("from-b.txt").exists() && b.join("from-a.txt").exists());

    // A 150 MiB file arrives intact.
    let big = seeded(150 << 20, 11);
    let staging = tmp.path().join("big.staging");
    fs::write(&staging, &big).unwrap();
    fs::copy(&staging, a.join("big.bin")).unwrap();
    let want = blake3::hash(&big);
    until(120, "the 150 MiB file in B", || {
        fs::read(b.join("big.bin")).is_ok_and(|d| blake3::hash(&d) == want)
    })
    .await;
    same_trees(&a, &b, "equal trees").await;
    assert!(wa.log().contains("uploaded big.bin"), "{}", wa.log());
    assert!(
        wb.log().contains("downloaded big.bin from A"),
        "{}",
        wb.log()
    );
    assert!(wa.stop(), "watch exits 0 on SIGTERM");
    assert!(wb.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_save_by_rename_is_one_change() {
    let server = Server::start().await;
    let (_tmp, a, b) = two_dirs();
    let _wa = Watcher::start(&a, &server.url, "A");
    let _wb = Watcher::start(&b, &server.url, "B");
    write(&a, "doc.txt", "draft 1");
    until(60, "doc.txt in B", || {
        read(&b.join("doc.txt")).as_deref() == Some("draft 1")
    })
    .await;
    // What editors do: write a temp file beside the original, then rename it over.
    write(&a, ".doc.txt.swp", "draft 2");
    fs::rename(a.join(".doc.txt.swp"), a.join("doc.txt")).unwrap();
    until(60, "the save in B", || {
        read(&b.join("doc.txt")).as_deref() == Some("draft 2")
    })
    .await;
    // B's watch holds B's folder: ask the server directly.
    let mut remote = lbsync_client::remote::Remote::connect(&server.url, None, "default", "t#1")
        .await
        .unwrap();
    let versions = remote
        .history(&lbsync_proto::SyncPath::new("doc.txt").unwrap())
        .await
        .unwrap();
    assert_eq!(versions.len(), 2, "one version per save: {versions:?}");
    assert!(
        versions.iter().all(|v| !v.deleted),
        "never deleted: {versions:?}"
    );
    let swap = remote
        .history(&lbsync_proto::SyncPath::new(".doc.txt.swp").unwrap())
        .await
        .unwrap();
    assert!(
        swap.is_empty(),
        "the temp file never reached the server: {swap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_are_kept_queued_and_converge_with_conflicted_copies() {
    let server = Server::start().await;
    let (_tmp, a, b) = two_dirs();
    let wa = Watcher::start(&a, &server.url, "A");
    let wb = Watcher::start(&b, &server.url, "B");
    write(&a, "shared.txt", "v0");
    until(60, "shared.txt in B", || b.join("shared.txt").exists()).await;

    let stopped = server.stop_keeping_store().await;
    until(60, "A to notice", || wa.log().contains("offline")).await;
    write(&a, "shared.txt", "edited on A while offline");
    write(&b, "shared.txt", "edited on B while offline");
    write(&a, "only-a.txt", "queued on A");
    // A dies while offline with its change queued, and comes back.
    until(60, "A to see its queue", || {
        wa.log().contains("changes queued")
    })
    .await;
    wa.kill9();
    let server = stopped.restart().await;
    let wa = Watcher::start(&a, &server.url, "A");
    until(90, "the queued file in B", || b.join("only-a.txt").exists()).await;
    same_trees(&a, &b, "convergence after the outage").await;
    let copies: Vec<String> = tree(&a)
        .into_keys()
        .filter(|p| p.contains("conflicted copy"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let contents = [
        read(&a.join("shared.txt")).unwrap(),
        read(&a.join(&copies[0])).unwrap(),
    ];
    assert!(
        contents.contains(&"edited on A while offline".to_owned()),
        "{contents:?}"
    );
    assert!(
        contents.contains(&"edited on B while offline".to_owned()),
        "{contents:?}"
    );
    assert!(wb.log().contains("back online"), "{}", wb.log());
    drop(wa);
    drop(wb);
    server.stop().await;
}
