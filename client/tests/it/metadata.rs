//! Metadata-only changes (mtime, mode; same bytes): they travel as `same_content` commits and
//! entries, and the receiver sets them on the file it has, never rewriting it.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use lbsync_proto::pb;

use crate::util::*;

/// Sets `rel`'s mtime to `secs` after the epoch, as `touch -d` does.
fn touch(root: &Path, rel: &str, secs: u64) {
    let f = fs::File::options()
        .write(true)
        .open(root.join(rel))
        .unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

fn mtime_s(root: &Path, rel: &str) -> i64 {
    fs::metadata(root.join(rel)).unwrap().mtime()
}

fn inode(root: &Path, rel: &str) -> u64 {
    fs::metadata(root.join(rel)).unwrap().ino()
}

/// The server's retained versions of `path` in folder "default", newest first.
async fn history(server: &Server, path: &str) -> Vec<pb::Entry> {
    let mut c = pb::sync_client::SyncClient::connect(server.url.clone())
        .await
        .unwrap();
    c.history(pb::HistoryRequest {
        folder: "default".into(),
        path: path.as_bytes().to_vec().into(),
        version: 0,
        raw_path: Default::default(),
    })
    .await
    .unwrap()
    .into_inner()
    .versions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_touch_travels_as_a_metadata_only_commit_and_is_applied_in_place() {
    let server = Server::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    for i in 0..20 {
        write(
            a,
            &format!("src/f{i}.txt"),
            format!("file {i}\n").repeat(40),
        );
    }
    write(a, "big.bin", seeded(2 << 20, 3));
    converge(&[a, b], &server).await;
    let inodes: Vec<u64> = (0..20)
        .map(|i| inode(b, &format!("src/f{i}.txt")))
        .chain([inode(b, "big.bin")])
        .collect();

    for i in 0..20 {
        touch(a, &format!("src/f{i}.txt"), 1_700_000_000 + i);
    }
    touch(a, "big.bin", 1_700_000_100);
    let up = sync(a, &server, "dev0").await;
    assert!(up.in_sync(), "{up:?}");
    assert_eq!(up.uploaded, 21, "a touch is sent: {up:?}");
    assert_eq!(up.chunks_sent, 0, "{up:?}");
    // Paths and times only: no manifest, no chunk list (payload bytes, before zstd).
    assert!(up.bytes_sent < 21 * 60, "{up:?}");
    let versions = history(&server, "big.bin").await;
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0].manifest_id, versions[1].manifest_id);
    assert_eq!(versions[0].mtime_ns, 1_700_000_100 * 1_000_000_000);
    assert_eq!(versions[0].size, 2 << 20);

    let down = sync(b, &server, "dev1").await;
    assert!(down.in_sync(), "{down:?}");
    assert_eq!(down.in_place, 21, "{down:?}");
    assert_eq!(down.chunks_received, 0, "{down:?}");
    // Payload bytes, before the messages' zstd: entries without their manifest id.
    assert!(down.bytes_received < 21 * 80, "{down:?}");
    let after: Vec<u64> = (0..20)
        .map(|i| inode(b, &format!("src/f{i}.txt")))
        .chain([inode(b, "big.bin")])
        .collect();
    assert_eq!(inodes, after, "the same files, not rewritten");
    for i in 0..20 {
        assert_eq!(
            mtime_s(b, &format!("src/f{i}.txt")),
            1_700_000_000 + i as i64
        );
    }
    assert_eq!(mtime_s(b, "big.bin"), 1_700_000_100);
    assert_eq!(tree(a), tree(b));
    // Nothing left to do on either side: no echo of the applied change.
    for (d, dev) in [(a, "dev0"), (b, "dev1")] {
        let r = sync(d, &server, dev).await;
        assert_eq!(r.uploaded + r.downloaded, 0, "{r:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chmod_travels_and_is_applied_in_place() {
    let server = Server::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    write(a, "run.sh", "#!/bin/sh\necho hi\n");
    converge(&[a, b], &server).await;
    let before = inode(b, "run.sh");
    let mtime = mtime_s(b, "run.sh");

    fs::set_permissions(a.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    let up = sync(a, &server, "dev0").await;
    assert_eq!((up.uploaded, up.chunks_sent), (1, 0), "{up:?}");
    let down = sync(b, &server, "dev1").await;
    assert_eq!(down.in_place, 1, "{down:?}");
    let md = fs::metadata(b.join("run.sh")).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o755);
    assert_eq!(md.ino(), before, "the same file, not rewritten");
    assert_eq!(md.mtime(), mtime, "only the mode changed");

    // And back, with a touch in the same change.
    fs::set_permissions(a.join("run.sh"), fs::Permissions::from_mode(0o644)).unwrap();
    touch(a, "run.sh", 1_600_000_000);
    sync(a, &server, "dev0").await;
    let down = sync(b, &server, "dev1").await;
    assert_eq!(down.in_place, 1, "{down:?}");
    let md = fs::metadata(b.join("run.sh")).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o644);
    assert_eq!(md.mtime(), 1_600_000_000);
    assert_eq!(md.ino(), before);
    assert_eq!(tree(a), tree(b));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_touch_concurrent_with_an_edit_keeps_the_edit_either_way_round() {
    let server = Server::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    write(a, "one.txt", "1");
    write(a, "two.txt", "2");
    converge(&[a, b], &server).await;

    // The touch reaches the server first: the edit goes on top of it.
    touch(a, "one.txt", 1_700_000_000);
    write(b, "one.txt", "1, edited on b");
    sync(a, &server, "dev0").await;
    let rb = sync(b, &server, "dev1").await;
    assert_eq!(rb.conflicts, 0, "{rb:?}");
    // The edit reaches the server first: the touch gives way to it.
    write(b, "two.txt", "2, edited on b");
    fs::set_permissions(a.join("two.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    touch(a, "two.txt", 1_700_000_000);
    sync(b, &server, "dev1").await;
    let ra = sync(a, &server, "dev0").await;
    assert_eq!(ra.conflicts, 0, "{ra:?}");
    converge(&[a, b], &server).await;
    assert_eq!(tree(a), tree(b));
    for d in [a, b] {
        assert_eq!(
            fs::read_to_string(d.join("one.txt")).unwrap(),
            "1, edited on b"
        );
        assert_eq!(
            fs::read_to_string(d.join("two.txt")).unwrap(),
            "2, edited on b"
        );
        let copies = fs::read_dir(d)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("conflicted copy"))
            .count();
        assert_eq!(copies, 0);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_versions_behind_takes_the_manifest_from_the_history() {
    let server = Server::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    write(a, "touched.txt", "same bytes");
    write(a, "edited.txt", "old bytes");
    converge(&[a, b], &server).await;
    let before = inode(b, "touched.txt");
    // Two touches: B, at v1, hears only v3, sent as the same content as v2.
    touch(a, "touched.txt", 1_700_000_000);
    sync(a, &server, "dev0").await;
    touch(a, "touched.txt", 1_700_000_500);
    sync(a, &server, "dev0").await;
    // An edit then a touch: v3 is v2's content, which B never had.
    write(a, "edited.txt", "new bytes, longer");
    sync(a, &server, "dev0").await;
    touch(a, "edited.txt", 1_700_000_900);
    sync(a, &server, "dev0").await;

    let down = sync(b, &server, "dev1").await;
    assert!(down.in_sync(), "{down:?}");
    assert_eq!(down.in_place, 1, "{down:?}");
    assert_eq!(inode(b, "touched.txt"), before);
    assert_eq!(mtime_s(b, "touched.txt"), 1_700_000_500);
    assert_eq!(
        fs::read_to_string(b.join("edited.txt")).unwrap(),
        "new bytes, longer"
    );
    assert_eq!(mtime_s(b, "edited.txt"), 1_700_000_900);
    assert_eq!(tree(a), tree(b));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_checks_a_metadata_only_commit_like_any_other() {
    let server = Server::start().await;
    let a = tempfile::tempdir().unwrap();
    let a = a.path();
    write(a, "f.txt", "content");
    sync(a, &server, "dev0").await;
    let mut c = pb::sync_client::SyncClient::connect(server.url.clone())
        .await
        .unwrap();
    let hs = c
        .handshake(pb::HandshakeRequest {
            protocol_version: lbsync_proto::PROTOCOL_VERSION,
            folder: "default".into(),
            device: "raw".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(hs.same_content_commits);
    assert_eq!(hs.compression, ["zstd"]);
    let commit = |base_version: u64, path: &str| pb::CommitRequest {
        folder: "default".into(),
        entry: Some(pb::Entry {
            path: path.as_bytes().to_vec().into(),
            device: "raw".into(),
            ..Default::default()
        }),
        base_version,
        content: Some(pb::commit_request::Content::SameContent(pb::SameContent {
            mode: Some(0o600),
            mtime_ns: None,
        })),
        brief_answer: false,
    };
    let result = |r: pb::CommitResponse| r.result.unwrap();
    // A stale base is a conflict, nothing changes.
    let stale = c.commit(commit(7, "f.txt")).await.unwrap().into_inner();
    assert!(matches!(
        result(stale),
        pb::commit_response::Result::Conflict(_)
    ));
    // A path that does not exist: a conflict too, never a new file.
    let none = c.commit(commit(0, "nope.txt")).await.unwrap().into_inner();
    assert!(matches!(
        result(none),
        pb::commit_response::Result::Conflict(_)
    ));
    let ok = c.commit(commit(1, "f.txt")).await.unwrap().into_inner();
    let pb::commit_response::Result::Committed(e) = result(ok) else {
        panic!("not committed");
    };
    let v1 = &history(&server, "f.txt").await[1];
    assert_eq!((e.version, e.mode), (2, 0o600));
    assert_eq!((e.size, e.mtime_ns), (v1.size, v1.mtime_ns));
    assert_eq!(e.manifest_id, v1.manifest_id);
    let r = sync(a, &server, "dev0").await;
    assert_eq!(r.in_place, 1, "{r:?}");
    assert_eq!(
        fs::metadata(a.join("f.txt")).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A deleted file has no content to keep: a conflict (the client's v3 was another version,
    // as after a store restored from a backup), which it resolves as any, not an error it
    // would send again.
    fs::remove_file(a.join("f.txt")).unwrap();
    sync(a, &server, "dev0").await;
    let gone = c.commit(commit(3, "f.txt")).await.unwrap().into_inner();
    assert!(matches!(
        result(gone),
        pb::commit_response::Result::Conflict(_)
    ));
    assert!(
        history(&server, "f.txt").await[0].deleted,
        "nothing changed"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_folder_sends_metadata_changes_sealed_and_applies_them_in_place() {
    let server = Server::start().await;
    let (ta, tb, keys) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (pa, pb) = (ta.path(), tb.path());
    let pass = keys.path().join("pass");
    fs::write(&pass, "correct horse battery staple\n").unwrap();
    let env = [("LBSYNC_SCRYPT_LOG_N", "10")];
    for (dir, extra) in [(pa, Some("--encrypt")), (pb, None)] {
        let mut items = vec![
            "init",
            dir.to_str().unwrap(),
            "--server",
            &server.url,
            "--folder",
            "vault",
            "--key-file",
            pass.to_str().unwrap(),
        ];
        items.extend(extra);
        let out = run_env(args(&items), &env).await;
        assert!(out.status.success(), "{}", text(&out));
    }
    write(pa, "notes.txt", "meet at noon");
    write(pa, "tool.sh", "#!/bin/sh\n");
    converge(&[pa, pb], &server).await;
    let before = (inode(pb, "notes.txt"), inode(pb, "tool.sh"));

    touch(pa, "notes.txt", 1_700_000_000);
    fs::set_permissions(pa.join("tool.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    // The server cannot read sealed metadata: the manifest id goes with a new sealed entry (a
    // full commit, still no chunk and no manifest).
    let up = sync(pa, &server, "dev0").await;
    assert!(up.in_sync(), "{up:?}");
    assert_eq!((up.uploaded, up.chunks_sent), (2, 0), "{up:?}");
    let down = sync(pb, &server, "dev1").await;
    assert!(down.in_sync(), "{down:?}");
    assert_eq!(down.in_place, 2, "{down:?}");
    assert_eq!(before, (inode(pb, "notes.txt"), inode(pb, "tool.sh")));
    assert_eq!(mtime_s(pb, "notes.txt"), 1_700_000_000);
    assert_eq!(
        fs::metadata(pb.join("tool.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(tree(pa), tree(pb));
    server.stop().await;
}
