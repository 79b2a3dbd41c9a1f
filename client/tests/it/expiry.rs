//! Tombstone expiry end to end: a device offline for longer than the server keeps deletions
//! comes back, learns from `expired_seq` that it may have missed some, and re-scans safely: it
//! loses nothing (a file deleted elsewhere while it was away, whose deletion the server forgot,
//! comes back from it rather than vanishing), takes every change the server still shows, and
//! converges; a crash in the middle of the re-scan does not end it.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::fs;
use std::future::Future;
use std::path::Path;
use std::task::Poll;
use std::time::Duration;

use lbsync_chunkstore::PackStore;
use lbsync_client::{SyncOptions, Syncer};
use lbsync_server::admin::{self, Retention};

use crate::util::*;

/// The `rescan` flag in the folder's saved state.
fn rescan_saved(root: &Path) -> bool {
    // A second connection to the database: it reads while the sync holds its own.
    let db = lbsync_client::state::db::StateDb::open(&root.join(".lbsync")).unwrap();
    let Some(header) = db.header().unwrap() else {
        return false;
    };
    let v: serde_json::Value = serde_json::from_slice(&header).unwrap();
    v["rescan"].as_bool().unwrap_or(false)
}

/// Stops the server, runs `gc` with tombstones kept for no time at all, restarts it; returns
/// how many tombstones were forgotten.
async fn expire_every_tombstone(server: Server) -> (Server, u64) {
    let store_dir = server.store_dir.clone();
    let stopped = server.stop_keeping_store().await;
    let gc = tokio::task::spawn_blocking(move || {
        let store = PackStore::open(&store_dir).unwrap();
        let retention = Retention {
            keep_tombstones: Duration::ZERO,
            ..Retention::default()
        };
        admin::gc(
            &lbsync_server::Backend::local(store.clone()).unwrap(),
            retention,
            Duration::ZERO,
            false,
        )
        .unwrap()
    })
    .await
    .unwrap();
    (stopped.restart().await, gc.tombstones_expired)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_away_past_the_tombstone_retention_rescans_and_loses_nothing() {
    let server = Server::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    write(a, "keep.txt", "kept");
    write(a, "gone.txt", "deleted on A while B was away");
    write(a, "edit.txt", "v1");
    write(a, "both-gone.txt", "deleted on both");
    converge(&[a, b], &server).await;

    // B is offline. A deletes a file and edits another; B deletes one A deleted too, and
    // writes a new one.
    fs::remove_file(a.join("gone.txt")).unwrap();
    fs::remove_file(a.join("both-gone.txt")).unwrap();
    write(a, "edit.txt", "v2, edited on A");
    let ra = sync(a, &server, "dev0").await;
    assert_eq!(ra.deleted_there, 2, "{ra:?}");
    fs::remove_file(b.join("both-gone.txt")).unwrap();
    write(b, "b-new.txt", "written on B while away");

    let (server, expired) = expire_every_tombstone(server).await;
    assert_eq!(expired, 2);

    // A was informed of everything: no re-scan for it.
    let ra = sync(a, &server, "dev0").await;
    assert!(ra.in_sync() && ra.uploaded == 0, "{ra:?}");
    assert!(!rescan_saved(a));

    // B's first sync back dies right after it decided to re-scan: the decision is on disk.
    let opts = SyncOptions {
        server: Some(server.url.clone()),
        device: Some("dev1".into()),
        ..SyncOptions::default()
    };
    {
        let mut s = Syncer::open(b, &opts).await.unwrap();
        let mut fut = std::pin::pin!(s.sync());
        let killed = tokio::time::timeout(
            Duration::from_secs(60),
            std::future::poll_fn(|cx| {
                if rescan_saved(b) {
                    return Poll::Ready(true);
                }
                fut.as_mut().poll(cx).map(|r| {
                    r.unwrap();
                    false
                })
            }),
        )
        .await
        .unwrap();
        assert!(killed, "the re-scan flag is saved before the sync ends");
    }
    assert!(rescan_saved(b), "the flag survives the crash");
    assert_eq!(
        fs::read_to_string(b.join("gone.txt")).unwrap(),
        "deleted on A while B was away"
    );

    // The next sync re-scans: B's copy of the forgotten deletion goes back to the server, its
    // new file goes up, A's edit comes down, nothing is deleted here.
    let rb = sync(b, &server, "dev1").await;
    assert!(rb.in_sync(), "{rb:?}");
    assert_eq!(rb.deleted_here, 0, "{rb:?}");
    assert_eq!(rb.deleted_there, 0, "{rb:?}");
    assert_eq!(rb.uploaded, 2, "gone.txt again and b-new.txt: {rb:?}");
    assert!(!rescan_saved(b), "a finished re-scan clears the flag");
    assert_eq!(
        fs::read_to_string(b.join("edit.txt")).unwrap(),
        "v2, edited on A"
    );
    assert_eq!(
        fs::read_to_string(b.join("gone.txt")).unwrap(),
        "deleted on A while B was away"
    );

    converge(&[a, b], &server).await;
    assert_eq!(tree(a), tree(b));
    let t = tree(a);
    let paths: Vec<_> = t.keys().map(String::as_str).collect();
    assert_eq!(paths, ["b-new.txt", "edit.txt", "gone.txt", "keep.txt"]);
    assert_eq!(
        fs::read_to_string(a.join("gone.txt")).unwrap(),
        "deleted on A while B was away"
    );

    // Past the horizon now: a further sync of B is no re-scan and moves nothing.
    let rb = sync(b, &server, "dev1").await;
    assert!(rb.in_sync() && rb.uploaded + rb.downloaded == 0, "{rb:?}");
    assert!(!rescan_saved(b));
    server.stop().await;
}
