//! End-to-end encrypted folders through the real binary and in-process syncs: init and join,
//! convergence with plaintext names, wrong passphrases, re-keying, sharing to an age identity,
//! history, restore and undelete, and clients that must refuse to sync.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::fs;
use std::path::Path;

use crate::util::*;

/// A cheap scrypt work factor for the wraps tests make (honoured for tests only).
const FAST_SCRYPT: (&str, &str) = ("LBSYNC_SCRYPT_LOG_N", "10");

/// Runs the binary with the cheap scrypt work factor.
async fn client(items: &[&str]) -> std::process::Output {
    run_env(args(items), &[FAST_SCRYPT]).await
}

/// A passphrase file in `dir`.
fn pass_file(dir: &Path, name: &str, pass: &str) -> String {
    let f = dir.join(name);
    fs::write(&f, format!("{pass}\n")).unwrap();
    f.to_str().unwrap().to_owned()
}

/// The key fingerprint `init` printed.
fn fingerprint(out: &std::process::Output) -> String {
    let t = text(out);
    let line = t
        .lines()
        .find(|l| l.starts_with("key fingerprint: "))
        .unwrap_or_else(|| panic!("no fingerprint in {t}"));
    line["key fingerprint: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .to_owned()
}

/// Makes folder `folder` encrypted from `dir` with the passphrase in `pass`.
async fn make(server: &Server, dir: &str, folder: &str, pass: &str) -> String {
    let out = client(&[
        "init",
        dir,
        "--server",
        &server.url,
        "--folder",
        folder,
        "--encrypt",
        "--key-file",
        pass,
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("the data is gone for good"),
        "the lost-passphrase warning: {}",
        text(&out)
    );
    fingerprint(&out)
}

/// Joins folder `folder` from `dir` with the passphrase in `pass`.
async fn join(server: &Server, dir: &str, folder: &str, pass: &str) -> std::process::Output {
    client(&[
        "init",
        dir,
        "--server",
        &server.url,
        "--folder",
        folder,
        "--key-file",
        pass,
    ])
    .await
}

/// The server's journal, as raw wire entries: what the server holds of the folder.
async fn server_paths(server: &Server, folder: &str) -> Vec<String> {
    use lbsync_proto::pb;
    let mut c = pb::sync_client::SyncClient::connect(server.url.clone())
        .await
        .unwrap();
    let mut stream = c
        .changes(pb::ChangesRequest {
            folder: folder.into(),
            cursor: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        out.extend(
            m.entries
                .iter()
                .map(|e| String::from_utf8_lossy(&e.path).into_owned()),
        );
        if m.caught_up {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_converge_on_an_encrypted_folder_with_plaintext_names() {
    let server = Server::start().await;
    let (ta, tb, keys) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (pa, pb) = (ta.path(), tb.path());
    let (a, b) = (pa.to_str().unwrap(), pb.to_str().unwrap());
    let pass = pass_file(keys.path(), "pass", "correct horse battery staple");
    let fp = make(&server, a, "vault", &pass).await;
    let out = join(&server, b, "vault", &pass).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fingerprint(&out), fp, "both devices hold the same key");
    let key = pa.join(".lbsync/folder.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    write(pa, "notes.txt", "meet at noon");
    write(pa, "docs/deep/report.bin", seeded(300_000, 1));
    write(pa, "docs/tool.sh", "#!/bin/sh\necho hi\n");
    fs::set_permissions(pa.join("docs/tool.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir_all(pa.join("empty/dir")).unwrap();
    std::os::unix::fs::symlink("docs/deep/report.bin", pa.join("link")).unwrap();
    write(pa, "big.bin", seeded(3 << 20, 2));
    converge(&[pa, pb], &server).await;
    assert_eq!(tree(pa), tree(pb));
    assert!(pb.join("empty/dir").is_dir());
    assert_eq!(
        fs::read_link(pb.join("link")).unwrap().to_str(),
        Some("docs/deep/report.bin")
    );
    // The server holds none of the names.
    let names = server_paths(&server, "vault").await;
    assert!(!names.is_empty());
    for n in &names {
        for word in ["notes", "docs", "report", "empty", "link", "big"] {
            assert!(!n.contains(word), "{n} names {word}");
        }
    }

    // Modify, delete, rename, both ways.
    write(pa, "notes.txt", "meet at one");
    fs::remove_file(pa.join("docs/tool.sh")).unwrap();
    fs::rename(pa.join("big.bin"), pa.join("docs/big-renamed.bin")).unwrap();
    let mut big = seeded(3 << 20, 2);
    big[1 << 20] ^= 1;
    write(pb, "edited-on-b.bin", &big);
    converge(&[pa, pb], &server).await;
    assert_eq!(tree(pa), tree(pb));
    assert!(!pb.join("docs/tool.sh").exists());
    assert_eq!(
        fs::read_to_string(pb.join("notes.txt")).unwrap(),
        "meet at one"
    );
    assert!(pa.join("edited-on-b.bin").exists());

    // A conflict keeps both versions, with plaintext names.
    write(pa, "notes.txt", "a's version");
    write(pb, "notes.txt", "b's version");
    converge(&[pa, pb], &server).await;
    assert_eq!(tree(pa), tree(pb));
    let copies: Vec<String> = fs::read_dir(pa)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("notes") && n.contains("conflict"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let both: Vec<String> = [pa.join("notes.txt"), pa.join(&copies[0])]
        .iter()
        .map(|p| fs::read_to_string(p).unwrap())
        .collect();
    assert!(both.contains(&"a's version".to_owned()) && both.contains(&"b's version".to_owned()));

    // A path deleted and made again (a new path over a tombstone) is no conflict.
    fs::remove_file(pa.join("notes.txt")).unwrap();
    converge(&[pa, pb], &server).await;
    write(pb, "notes.txt", "back again");
    converge(&[pa, pb], &server).await;
    assert_eq!(tree(pa), tree(pb));
    assert_eq!(
        fs::read_to_string(pa.join("notes.txt")).unwrap(),
        "back again"
    );
    let copies = fs::read_dir(pa)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("conflict"))
        .count();
    assert_eq!(copies, 1, "only the real conflict's copy");

    // status shows plaintext paths and says the folder is encrypted.
    write(pa, "unsent.txt", "x");
    let out = run(args(&["status", a, "--json"])).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pending"][0], "new unsent.txt");
    assert_eq!(v["encrypted"], true);
    assert_eq!(v["key_fingerprint"], fp.as_str());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_passphrase_is_refused_and_writes_nothing() {
    let server = Server::start().await;
    let (ta, tb, keys) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (a, pb) = (ta.path().to_str().unwrap(), tb.path());
    let right = pass_file(keys.path(), "right", "right one");
    let wrong = pass_file(keys.path(), "wrong", "wrong one");
    make(&server, a, "vault", &right).await;
    write(ta.path(), "secret.txt", "s");
    sync(ta.path(), &server, "a").await;
    let out = join(&server, pb.to_str().unwrap(), "vault", &wrong).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("wrong passphrase"), "{}", text(&out));
    assert!(!pb.join(".lbsync").exists(), "nothing written");
    assert_eq!(fs::read_dir(pb).unwrap().count(), 0);
    // Without init, a sync is refused and says what to run.
    let out = run(args(&[
        "sync",
        pb.to_str().unwrap(),
        "--server",
        &server.url,
        "--folder",
        "vault",
    ]))
    .await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("folder vault is end-to-end encrypted: run `lbsync-client init"),
        "{}",
        text(&out)
    );
    assert!(!pb.join("secret.txt").exists());
    // A folder that holds entries in the clear is not made encrypted.
    let tc = tempfile::tempdir().unwrap();
    write(tc.path(), "plain.txt", "p");
    let out = run(args(&[
        "sync",
        tc.path().to_str().unwrap(),
        "--server",
        &server.url,
        "--folder",
        "plain",
    ]))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let td = tempfile::tempdir().unwrap();
    let out = client(&[
        "init",
        td.path().to_str().unwrap(),
        "--server",
        &server.url,
        "--folder",
        "plain",
        "--encrypt",
        "--key-file",
        &right,
    ])
    .await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("make a new folder"), "{}", text(&out));
    assert!(!td.path().join(".lbsync").exists());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passphrase_change_refuses_the_old_one_and_keeps_the_data() {
    let server = Server::start().await;
    let (ta, tb, tc, keys) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (pa, pb, pc) = (ta.path(), tb.path(), tc.path());
    let old = pass_file(keys.path(), "old", "old passphrase");
    let new = pass_file(keys.path(), "new", "new passphrase");
    let fp = make(&server, pa.to_str().unwrap(), "vault", &old).await;
    let out = join(&server, pb.to_str().unwrap(), "vault", &old).await;
    assert!(out.status.success(), "{}", text(&out));
    write(pa, "kept.txt", "before the change");
    converge(&[pa, pb], &server).await;

    // A wrong old passphrase changes nothing.
    let out = client(&[
        "passphrase",
        pa.to_str().unwrap(),
        "--key-file",
        &new,
        "--old-key-file",
        &new,
    ])
    .await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("wrong passphrase"), "{}", text(&out));
    let out = client(&[
        "passphrase",
        pa.to_str().unwrap(),
        "--key-file",
        &new,
        "--old-key-file",
        &old,
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let out = join(&server, pc.to_str().unwrap(), "vault", &old).await;
    assert!(!out.status.success(), "the old passphrase is refused");
    assert!(text(&out).contains("wrong passphrase"), "{}", text(&out));
    assert!(!pc.join(".lbsync").exists());
    let out = join(&server, pc.to_str().unwrap(), "vault", &new).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        fingerprint(&out),
        fp,
        "the key is the same: nothing re-encrypted"
    );
    // Every device keeps syncing, the joined one gets the data.
    write(pb, "after.txt", "after the change");
    converge(&[pa, pb, pc], &server).await;
    assert_eq!(tree(pa), tree(pc));
    assert_eq!(tree(pb), tree(pc));
    assert_eq!(
        fs::read_to_string(pc.join("kept.txt")).unwrap(),
        "before the change"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_key_lets_an_age_identity_join() {
    let server = Server::start().await;
    let (ta, tb, keys) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (pa, pb) = (ta.path(), tb.path());
    let pass = pass_file(keys.path(), "pass", "p");
    let fp = make(&server, pa.to_str().unwrap(), "vault", &pass).await;
    write(pa, "shared.txt", "for you");
    sync(pa, &server, "a").await;

    let id = keys.path().join("id.txt");
    let out = client(&["keygen", id.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", text(&out));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&id).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let recipient = text(&out)
        .split_whitespace()
        .find(|w| w.starts_with("age1"))
        .unwrap()
        .to_owned();
    let out = client(&["keygen", id.to_str().unwrap()]).await;
    assert!(!out.status.success(), "keygen never overwrites");

    // Not shared yet: refused, nothing written.
    let join_id = |dir: &Path| {
        let dir = dir.to_str().unwrap().to_owned();
        let (url, id) = (server.url.clone(), id.to_str().unwrap().to_owned());
        async move {
            client(&[
                "init",
                &dir,
                "--server",
                &url,
                "--folder",
                "vault",
                "--identity",
                &id,
            ])
            .await
        }
    };
    let out = join_id(pb).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("share-key"), "{}", text(&out));
    assert!(!pb.join(".lbsync").exists());

    let out = client(&["share-key", pa.to_str().unwrap(), "--recipient", &recipient]).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = join_id(pb).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fingerprint(&out), fp);
    sync(pb, &server, "b").await;
    assert_eq!(
        fs::read_to_string(pb.join("shared.txt")).unwrap(),
        "for you"
    );
    // The passphrase still works next to the share.
    let tc = tempfile::tempdir().unwrap();
    let out = join(&server, tc.path().to_str().unwrap(), "vault", &pass).await;
    assert!(out.status.success(), "{}", text(&out));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_restore_and_undelete_work_on_an_encrypted_folder() {
    let server = Server::start().await;
    let (ta, tb, keys) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (pa, pb) = (ta.path(), tb.path());
    let (a, b) = (pa.to_str().unwrap(), pb.to_str().unwrap());
    let pass = pass_file(keys.path(), "pass", "p");
    make(&server, a, "vault", &pass).await;
    assert!(join(&server, b, "vault", &pass).await.status.success());
    write(pa, "notes.txt", "first");
    sync(pa, &server, "laptop").await;
    write(pa, "notes.txt", "second, longer");
    sync(pa, &server, "laptop").await;
    sync(pb, &server, "desktop").await;

    let out = run(args(&["history", &format!("{a}/notes.txt"), "--json"])).await;
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["path"], "notes.txt");
    let versions = v["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{v}");
    assert_eq!(versions[0]["version"], 2);
    assert_eq!(versions[0]["size"], 14, "the real size, opened");
    assert_eq!(versions[1]["size"], 5);
    assert_eq!(v["tampered"].as_array().unwrap().len(), 0);

    let out = run(args(&[
        "restore",
        &format!("{b}/notes.txt"),
        "--version",
        "1",
    ]))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("restored notes.txt v1 as v3"),
        "{}",
        text(&out)
    );
    assert_eq!(fs::read_to_string(pb.join("notes.txt")).unwrap(), "first");
    sync(pa, &server, "laptop").await;
    assert_eq!(fs::read_to_string(pa.join("notes.txt")).unwrap(), "first");

    // Undelete brings a deleted tree back everywhere.
    write(pa, "proj/a.txt", "a");
    write(pa, "proj/b.txt", "b");
    converge(&[pa, pb], &server).await;
    let everything = tree(pa);
    fs::remove_dir_all(pa.join("proj")).unwrap();
    converge(&[pa, pb], &server).await;
    assert!(!pb.join("proj").exists());
    let out = run(args(&["undelete", b])).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("restored 2 files and 1 directory"),
        "{}",
        text(&out)
    );
    converge(&[pa, pb], &server).await;
    assert_eq!(tree(pa), everything);
    assert_eq!(tree(pb), everything);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_says_the_folder_is_not_encrypted_is_refused() {
    let server = Server::start().await;
    let other = Server::start().await;
    let (ta, keys) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pa = ta.path();
    let pass = pass_file(keys.path(), "pass", "p");
    make(&server, pa.to_str().unwrap(), "vault", &pass).await;
    write(pa, "secret.txt", "not for the other server");
    sync(pa, &server, "a").await;
    // The same folder name on a server where it is plain: a downgrade, refused.
    let out = run(args(&[
        "sync",
        pa.to_str().unwrap(),
        "--server",
        &other.url,
    ]))
    .await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(
            "the server says folder vault is not encrypted, but this folder was set up \
             encrypted: refusing to sync"
        ),
        "{}",
        text(&out)
    );
    assert!(
        server_paths(&other, "vault").await.is_empty(),
        "nothing sent"
    );
    server.stop().await;
    other.stop().await;
}
