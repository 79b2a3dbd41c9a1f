//! The safety promises, one named test per scenario, through the real `lbsync-client` binary: a
//! folder moved away, a foreign or lost state, an unreadable directory, ignore rules, a mass
//! deletion, symlinked parents, setuid bits, a wiped or rolled-back server store, edits that
//! fingerprints miss, entries that cannot be applied, a second client, a closed stdout and a bad
//! URL. Each checks what the user sees (files on disk, on the server, on other devices, exit codes
//! and messages), not the engine's internals.

#![allow(clippy::unwrap_used)] // tests: a failure is a test failure

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use lbsync_client::remote::Remote;
use lbsync_proto::Entry;

use crate::procs::{CLIENT_BIN, Watcher};
use crate::util::*;

/// A temp dir holding an empty directory for each name.
fn dirs<const N: usize>(names: [&str; N]) -> (tempfile::TempDir, [PathBuf; N]) {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = names.map(|n| {
        let d = tmp.path().join(n);
        fs::create_dir_all(&d).unwrap();
        d
    });
    (tmp, dirs)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `lbsync-client sync DIR` as `device`, with `extra` arguments.
async fn sync_as(dir: &Path, server: &Server, device: &str, extra: &[&str]) -> Output {
    let mut a = args(&["sync", s(dir), "--server", &server.url, "--device", device]);
    a.extend(args(extra));
    run(a).await
}

/// Like [`sync_as`], and it must succeed.
async fn synced(dir: &Path, server: &Server, device: &str) {
    let out = sync_as(dir, server, device, &[]).await;
    assert!(
        out.status.success(),
        "sync {}: {}",
        dir.display(),
        text(&out)
    );
}

/// The server folder's current entries that are not deleted, by path.
async fn live_on_server(server: &Server) -> BTreeMap<String, Entry> {
    let mut r = Remote::connect(&server.url, None, "default", "probe#test")
        .await
        .unwrap();
    let (entries, _) = r.changes_until_caught_up(0).await.unwrap();
    entries
        .into_iter()
        .filter(|(_, e)| !e.deleted)
        .map(|(p, e)| (p.as_str().to_owned(), e))
        .collect()
}

/// Asserts that every path in `want` is live on the server.
async fn server_has(server: &Server, want: &[String], what: &str) {
    let live = live_on_server(server).await;
    let missing: Vec<&String> = want.iter().filter(|p| !live.contains_key(*p)).collect();
    assert!(missing.is_empty(), "{what}: the server lost {missing:?}");
}

/// Writes `n` files `prefix/i.txt` and returns their paths.
fn files(root: &Path, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let rel = format!("{prefix}/{i}.txt");
            write(root, &rel, format!("{prefix} file {i}\n"));
            rel
        })
        .collect()
}

fn missing_here(root: &Path, want: &[String]) -> Vec<String> {
    want.iter()
        .filter(|p| !root.join(p).exists())
        .cloned()
        .collect()
}

/// Asserts that `cond` holds every 10 ms for `ms` milliseconds: for what must not happen.
async fn stays(ms: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < end {
        assert!(cond(), "{what} stopped holding");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Conflicted copies anywhere under `root`.
fn conflicted_copies(root: &Path) -> Vec<String> {
    tree(root)
        .into_keys()
        .filter(|p| p.contains("conflicted copy"))
        .collect()
}

/// Spawns `cmd` with its output in a log file; its status if it exits within `secs`, and the
/// log. A process still running then is killed.
async fn exits_within(mut cmd: Command, secs: u64) -> (Option<std::process::ExitStatus>, String) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    (status, fs::read_to_string(log.path()).unwrap_or_default())
}

// 1. A folder moved away while `watch` runs.

async fn folder_moved_away(empty_dir_in_its_place: bool) {
    let server = Server::start().await;
    let (tmp, [a, b, c]) = dirs(["a", "b", "c"]);
    let paths = files(&a, "docs", 10);
    let mut wa = Watcher::start(&a, &server.url, "A");
    let _wb = Watcher::start(&b, &server.url, "B");
    until(10, "the files in B", || missing_here(&b, &paths).is_empty()).await;

    let away = tmp.path().join("a-moved-away");
    fs::rename(&a, &away).unwrap();
    if empty_dir_in_its_place {
        fs::create_dir(&a).unwrap();
    }
    // Removals are debounced three times longer (50 ms here): give it several periods.
    stays(1_000, "every file in B", || {
        missing_here(&b, &paths).is_empty()
    })
    .await;
    let logged = {
        let deadline = Instant::now() + Duration::from_secs(4);
        while !wa.log().contains("stopped") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        wa.log().contains("stopped")
    };
    server_has(&server, &paths, "after the folder moved away").await;
    synced(&c, &server, "C").await;
    assert_eq!(missing_here(&c, &paths), Vec::<String>::new());
    assert!(wa.running(), "A's watch exited: {}", wa.log());
    assert!(logged, "A's watch did not say it stopped: {}", wa.log());

    if empty_dir_in_its_place {
        fs::remove_dir(&a).unwrap();
    }
    fs::rename(&away, &a).unwrap();
    write(&a, "docs/0.txt", "edited after moving back");
    until(10, "the edit made after moving back in B", || {
        fs::read_to_string(b.join("docs/0.txt")).is_ok_and(|t| t == "edited after moving back")
    })
    .await;
    assert_eq!(missing_here(&b, &paths), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_folder_away_while_watching_deletes_nothing() {
    folder_moved_away(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_folder_away_and_leaving_an_empty_one_deletes_nothing() {
    folder_moved_away(true).await;
}

// 2. A state that belongs to another directory.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_without_its_marker_refuses() {
    let server = Server::start().await;
    let (_tmp, [a, other, c]) = dirs(["a", "other", "c"]);
    let mine = files(&a, "mine", 5);
    let theirs = files(&other, "theirs", 5);
    synced(&a, &server, "A").await;
    synced(&other, &server, "O").await;
    synced(&a, &server, "A").await;
    // a's state is swapped for other's, as a careless copy of a folder would leave it.
    fs::remove_dir_all(a.join(".lbsync")).unwrap();
    cp_a(&other.join(".lbsync"), &a.join(".lbsync"));
    fs::remove_dir_all(a.join("theirs")).unwrap();

    let out = sync_as(&a, &server, "A", &[]).await;
    assert!(
        !out.status.success(),
        "sync with a foreign state: {}",
        text(&out)
    );
    let all: Vec<String> = mine.iter().chain(&theirs).cloned().collect();
    server_has(&server, &all, "after a sync with a foreign state").await;
    assert_eq!(missing_here(&a, &mine), Vec::<String>::new());
    synced(&other, &server, "O").await;
    assert_eq!(missing_here(&other, &all), Vec::<String>::new());
    synced(&c, &server, "C").await;
    assert_eq!(missing_here(&c, &all), Vec::<String>::new());
}

// 3. An unreadable directory.

/// `lbsync-client ARGS` without the capabilities that let root read anything, or `None` where
/// that cannot be done (the test is then skipped, except in CI).
fn unprivileged(a: &[&str]) -> Option<Command> {
    let drop = [
        "--inh-caps=-all",
        "--bounding-set=-dac_override,-dac_read_search",
    ];
    let works = Command::new("setpriv")
        .args(drop)
        .arg("true")
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        let why = "setpriv cannot drop dac_override here";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("skipped: {why}");
        return None;
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(drop).arg(CLIENT_BIN).args(a);
    Some(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_directory_deletes_nothing() {
    let server = Server::start().await;
    let (_tmp, [a, b]) = dirs(["a", "b"]);
    let proj = files(&a, "proj", 5);
    let top = files(&a, "top", 2);
    synced(&a, &server, "A").await;
    synced(&b, &server, "B").await;

    fs::set_permissions(a.join("proj"), fs::Permissions::from_mode(0o000)).unwrap();
    let sync = ["sync", s(&a), "--server", &server.url, "--device", "A"];
    let Some(cmd) = unprivileged(&sync) else {
        return;
    };
    let (status, log) = exits_within(cmd, 10).await;
    let status_cmd = unprivileged(&["status", s(&a)]).unwrap();
    let (_, status_log) = exits_within(status_cmd, 10).await;
    fs::set_permissions(a.join("proj"), fs::Permissions::from_mode(0o755)).unwrap();

    assert!(
        status.is_some_and(|s| !s.success()),
        "sync: {status:?}: {log}"
    );
    let all: Vec<String> = proj.iter().chain(&top).cloned().collect();
    server_has(&server, &all, "after a sync that could not read proj").await;
    synced(&b, &server, "B").await;
    assert_eq!(missing_here(&b, &all), Vec::<String>::new());
    assert!(status_log.contains("proj"), "status: {status_log}");
}

// 4. Ignore rules.

/// A rule that keeps `logs/` (and the ignore file itself) on this device only.
const LOCAL_RULE: &str = "logs/\n.lbsyncignore\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ignore_rule_deletes_nothing_anywhere() {
    let server = Server::start().await;
    let (_tmp, [a, b]) = dirs(["a", "b"]);
    let logs = files(&a, "logs", 5);
    synced(&a, &server, "A").await;
    synced(&b, &server, "B").await;
    write(&a, ".lbsyncignore", LOCAL_RULE);
    synced(&a, &server, "A").await;
    synced(&b, &server, "B").await;
    server_has(&server, &logs, "after an ignore rule on the sender").await;
    assert_eq!(missing_here(&b, &logs), Vec::<String>::new());
    assert_eq!(missing_here(&a, &logs), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ignore_rule_on_the_receiver_deletes_nothing() {
    let server = Server::start().await;
    let (_tmp, [a, b]) = dirs(["a", "b"]);
    let logs = files(&a, "logs", 5);
    synced(&a, &server, "A").await;
    synced(&b, &server, "B").await;
    write(&b, ".lbsyncignore", LOCAL_RULE);
    synced(&b, &server, "B").await;
    write(&a, "logs/0.txt", "edited on the sender");
    synced(&a, &server, "A").await;
    assert_eq!(missing_here(&a, &logs), Vec::<String>::new());
    server_has(&server, &logs, "after an ignore rule on the receiver").await;
    assert_eq!(
        fs::read_to_string(a.join("logs/0.txt")).unwrap(),
        "edited on the sender"
    );
    assert_eq!(missing_here(&b, &logs), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_ignore_rule_readopts_without_conflicts() {
    let server = Server::start().await;
    let (_tmp, [a, b]) = dirs(["a", "b"]);
    files(&a, "logs", 5);
    synced(&a, &server, "A").await;
    synced(&b, &server, "B").await;
    write(&a, ".lbsyncignore", LOCAL_RULE);
    synced(&a, &server, "A").await;
    // While a ignores logs/, b edits one of them.
    write(&b, "logs/1.txt", "edited on b while a ignored it");
    synced(&b, &server, "B").await;
    synced(&a, &server, "A").await;
    fs::remove_file(a.join(".lbsyncignore")).unwrap();
    synced(&a, &server, "A").await;
    synced(&b, &server, "B").await;
    synced(&a, &server, "A").await;
    assert_eq!(conflicted_copies(&a), Vec::<String>::new());
    assert_eq!(conflicted_copies(&b), Vec::<String>::new());
    assert_eq!(tree(&a), tree(&b));
    assert_eq!(
        fs::read_to_string(a.join("logs/1.txt")).unwrap(),
        "edited on b while a ignored it"
    );
}

// 5. A mass deletion.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_everything_is_held_back_until_confirmed() {
    let server = Server::start().await;
    let (_tmp, [a, b]) = dirs(["a", "b"]);
    let mut all = files(&a, "src", 60);
    all.extend(files(&a, "docs", 40));
    synced(&a, &server, "A").await;
    synced(&b, &server, "B").await;
    let before = tree(&a);

    // rm -rf DIR/*
    for e in fs::read_dir(&a).unwrap().flatten() {
        if !e.file_name().to_string_lossy().starts_with('.') {
            fs::remove_dir_all(e.path()).unwrap();
        }
    }
    let out = sync_as(&a, &server, "A", &[]).await;
    let said = text(&out);
    assert_eq!(
        out.status.code(),
        Some(3),
        "finished with paths waiting: {said}"
    );
    assert!(said.contains("held back"), "{said}");
    let confirm = format!("lbsync-client sync {} --allow-mass-delete", a.display());
    assert!(said.contains(&confirm), "no {confirm:?} in: {said}");
    server_has(&server, &all, "after a held-back mass deletion").await;
    synced(&b, &server, "B").await;
    assert_eq!(missing_here(&b, &all), Vec::<String>::new());

    let out = sync_as(&a, &server, "A", &["--allow-mass-delete"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(live_on_server(&server).await.len(), 0);
    synced(&b, &server, "B").await;
    assert_eq!(missing_here(&b, &all).len(), all.len());

    let out = run(args(&["undelete", s(&b)])).await;
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("restored 100 files"), "{said}");
    assert!(said.contains("deleted by A"), "{said}");
    synced(&a, &server, "A").await;
    assert_eq!(tree(&a), before);
    assert_eq!(tree(&b), before);
}

// 6. A symlinked parent.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlinked_parent_is_never_followed() {
    let server = Server::start().await;
    let (_tmp, [a, b, outside]) = dirs(["a", "b", "outside"]);
    write(&outside, "mine.txt", "outside the folder");
    write(&a, "start.txt", "start");
    synced(&a, &server, "A").await;
    synced(&b, &server, "B").await;
    std::os::unix::fs::symlink(&outside, a.join("d")).unwrap();
    synced(&a, &server, "A").await;
    // b replaces the link it got with a real directory holding a file.
    synced(&b, &server, "B").await;
    fs::remove_file(b.join("d")).unwrap();
    write(&b, "d/x.txt", "written on b");
    synced(&b, &server, "B").await;
    let out = sync_as(&a, &server, "A", &[]).await;
    let outside_now: Vec<String> = tree(&outside).into_keys().collect();
    assert_eq!(outside_now, ["mine.txt"], "A wrote through its link d");
    // B replaced the link with a directory: A's link (unchanged) gives way to a real directory
    // inside the folder, and the file lands there, never through the link.
    assert!(out.status.success(), "{}", text(&out));
    assert!(fs::symlink_metadata(a.join("d")).unwrap().is_dir());
    assert_eq!(
        fs::read_to_string(a.join("d/x.txt")).ok().as_deref(),
        Some("written on b")
    );

    write(&b, "later.txt", "still syncing");
    synced(&b, &server, "B").await;
    sync_as(&a, &server, "A", &[]).await;
    assert_eq!(
        fs::read_to_string(a.join("later.txt")).ok().as_deref(),
        Some("still syncing")
    );
    assert_eq!(tree(&outside).into_keys().collect::<Vec<_>>(), ["mine.txt"]);
}

// 7. Mode bits.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setuid_bits_are_never_applied() {
    let server = Server::start().await;
    let (_tmp, [a, b]) = dirs(["a", "b"]);
    write(&b, "tool", "#!/bin/sh\n");
    fs::set_permissions(b.join("tool"), fs::Permissions::from_mode(0o7755)).unwrap();
    write(&b, "shared/x.txt", "x");
    fs::set_permissions(b.join("shared"), fs::Permissions::from_mode(0o3775)).unwrap();
    synced(&b, &server, "B").await;
    synced(&a, &server, "A").await;
    for (p, kind) in [("tool", "file"), ("shared", "directory")] {
        let mode = fs::metadata(a.join(p)).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o7000,
            0,
            "the {kind} {p} has mode {mode:o} on A (setuid, setgid or sticky)"
        );
    }
    assert!(
        fs::metadata(a.join("tool")).unwrap().permissions().mode() & 0o100 != 0,
        "the exec bit still travels"
    );
}

// 8. The server's store replaced.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_store_gets_everything_again() {
    let server = Server::start().await;
    let (_tmp, [a, c]) = dirs(["a", "c"]);
    let all = files(&a, "work", 10);
    synced(&a, &server, "A").await;
    let store = server.store_dir.clone();
    let stopped = server.stop_keeping_store().await;
    fs::remove_dir_all(&store).unwrap();
    fs::create_dir(&store).unwrap();
    let server = stopped.restart().await;

    synced(&a, &server, "A").await;
    server_has(&server, &all, "after the store was wiped").await;
    synced(&c, &server, "C").await;
    assert_eq!(tree(&c), tree(&a));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_restored_from_a_backup_loses_no_newer_edit() {
    let server = Server::start().await;
    let (tmp, [a, c]) = dirs(["a", "c"]);
    files(&a, "work", 5);
    synced(&a, &server, "A").await;
    let store = server.store_dir.clone();
    let backup = tmp.path().join("backup");
    let stopped = server.stop_keeping_store().await;
    cp_a(&store, &backup);
    let server = stopped.restart().await;

    write(&a, "work/0.txt", "newer than the backup");
    write(&a, "work/new.txt", "made after the backup");
    synced(&a, &server, "A").await;
    let want = tree(&a);
    let stopped = server.stop_keeping_store().await;
    fs::remove_dir_all(&store).unwrap();
    cp_a(&backup, &store);
    let server = stopped.restart().await;

    sync_as(&a, &server, "A", &[]).await;
    assert_eq!(
        fs::read_to_string(a.join("work/0.txt")).unwrap(),
        "newer than the backup"
    );
    assert_eq!(tree(&a), want);
    synced(&a, &server, "A").await;
    synced(&c, &server, "C").await;
    assert_eq!(tree(&c), want);
}

/// The store is restored from a backup and another device commits as often as the backup lost,
/// so the journal's head is again the seq A synced up to, with another commit there. A sync that
/// skips its Changes call when the head is where it was (`HandshakeResponse.head_committed_ns`)
/// must still see that the journal was rewritten, and lose no write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_store_back_at_the_same_head_is_noticed() {
    let server = Server::start().await;
    let (tmp, [a, c]) = dirs(["a", "c"]);
    write(&a, "notes.txt", "first");
    synced(&a, &server, "A").await;
    let store = server.store_dir.clone();
    let backup = tmp.path().join("backup");
    let stopped = server.stop_keeping_store().await;
    cp_a(&store, &backup);
    let server = stopped.restart().await;
    write(&a, "notes.txt", "newer than the backup");
    synced(&a, &server, "A").await;
    let stopped = server.stop_keeping_store().await;
    fs::remove_dir_all(&store).unwrap();
    cp_a(&backup, &store);
    let server = stopped.restart().await;
    // One commit after the restore: the head is back at A's cursor.
    write(&c, "other.txt", "made on C after the restore");
    synced(&c, &server, "C").await;

    sync_as(&a, &server, "A", &[]).await;
    synced(&a, &server, "A").await;
    assert_eq!(
        fs::read_to_string(a.join("notes.txt")).unwrap(),
        "newer than the backup"
    );
    assert_eq!(
        fs::read_to_string(a.join("other.txt")).unwrap(),
        "made on C after the restore"
    );
    synced(&c, &server, "C").await;
    assert_eq!(tree(&c), tree(&a));
}

// 9. Changes that fingerprints can miss, and changes that are not content.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_edit_with_mtime_restored_is_sent() {
    let server = Server::start().await;
    let (_tmp, [a, b]) = dirs(["a", "b"]);
    write(&a, "db.bin", "0123456789abcdef");
    synced(&a, &server, "A").await;
    synced(&b, &server, "B").await;
    let path = a.join("db.bin");
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"XYZ", 4).unwrap();
        f.set_modified(mtime).unwrap();
    }
    assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), mtime);
    synced(&a, &server, "A").await;
    synced(&b, &server, "B").await;
    assert_eq!(
        fs::read_to_string(b.join("db.bin")).unwrap(),
        "0123XYZ789abcdef"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chmod_alone_is_not_a_conflict() {
    let server = Server::start().await;
    let (_tmp, [a, b]) = dirs(["a", "b"]);
    write(&a, "one.sh", "one v1\n");
    write(&a, "two.sh", "two v1\n");
    synced(&a, &server, "A").await;
    synced(&b, &server, "B").await;
    // one: A chmods, B edits. two: A edits, B chmods.
    fs::set_permissions(a.join("one.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    write(&b, "one.sh", "one edited on b\n");
    write(&a, "two.sh", "two edited on a\n");
    fs::set_permissions(b.join("two.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    sync_as(&a, &server, "A", &[]).await;
    sync_as(&b, &server, "B", &[]).await;
    synced(&a, &server, "A").await;
    synced(&b, &server, "B").await;
    assert_eq!(conflicted_copies(&a), Vec::<String>::new());
    assert_eq!(conflicted_copies(&b), Vec::<String>::new());
    for d in [&a, &b] {
        assert_eq!(
            fs::read_to_string(d.join("one.sh")).unwrap(),
            "one edited on b\n"
        );
        assert_eq!(
            fs::read_to_string(d.join("two.sh")).unwrap(),
            "two edited on a\n"
        );
    }
    assert_eq!(tree(&a), tree(&b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_a_that_keeps_content_commits_nothing() {
    let server = Server::start().await;
    let (_tmp, [a]) = dirs(["a"]);
    write(&a, "report.txt", "the same bytes");
    synced(&a, &server, "A").await;
    let (f, tmpname) = (a.join("report.txt"), a.join(".report.txt.tmp"));
    cp_a(&f, &tmpname);
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    let old = inode(&f);
    fs::rename(&tmpname, &f).unwrap();
    assert_ne!(inode(&f), old, "the inode should have changed");
    synced(&a, &server, "A").await;
    let out = run(args(&["history", s(&f)])).await;
    let versions: Vec<&str> = std::str::from_utf8(&out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('v'))
        .collect();
    assert_eq!(versions.len(), 1, "{}", text(&out));
}

// 10. A lost state.

/// Whether some file under `root`, `.lbsync/` included, holds exactly `data`.
fn bytes_somewhere(root: &Path, data: &[u8]) -> bool {
    fs::read_dir(root).unwrap().flatten().any(|e| {
        let p = e.path();
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => bytes_somewhere(&p, data),
            Ok(m) if m.is_file() => fs::read(&p).is_ok_and(|d| d == data),
            _ => false,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_state_does_not_bring_back_deleted_files() {
    let server = Server::start().await;
    let (_tmp, [a, b]) = dirs(["a", "b"]);
    write(&a, "f.txt", "deleted on b");
    write(&a, "g.txt", "kept");
    synced(&a, &server, "A").await;
    synced(&b, &server, "B").await;
    fs::remove_file(b.join("f.txt")).unwrap();
    synced(&b, &server, "B").await;
    fs::remove_dir_all(a.join(".lbsync")).unwrap();

    sync_as(&a, &server, "A", &[]).await;
    let live = live_on_server(&server).await;
    assert!(!live.contains_key("f.txt"), "f.txt came back to the server");
    assert!(live.contains_key("g.txt"));
    synced(&b, &server, "B").await;
    assert!(!b.join("f.txt").exists(), "f.txt came back to b");
    assert!(
        bytes_somewhere(&a, b"deleted on b"),
        "f.txt's bytes are gone from a"
    );
}

// 11. An entry that cannot be applied.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_cannot_be_applied_does_not_stop_the_others() {
    let server = Server::start().await;
    let (_tmp, [a, b]) = dirs(["a", "b"]);
    write(&a, ".lbsyncignore", "*.tmp\n");
    write(&a, "build/out.txt", "built");
    synced(&a, &server, "A").await;
    synced(&b, &server, "B").await;
    // build/ on a holds a file that does not sync, so it cannot become a file.
    write(&a, "build/local.tmp", "only here");
    fs::remove_dir_all(b.join("build")).unwrap();
    write(&b, "build", "now a file");
    synced(&b, &server, "B").await;

    let out = sync_as(&a, &server, "A", &[]).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("build"), "{}", text(&out));

    let mut wa = Watcher::start(&a, &server.url, "A");
    write(&b, "later/1.txt", "after the problem");
    synced(&b, &server, "B").await;
    until(10, "later/1.txt on a", || a.join("later/1.txt").exists()).await;
    assert!(wa.running(), "{}", wa.log());
    assert!(wa.stop());
    let _wa = Watcher::start(&a, &server.url, "A");
    write(&b, "later/2.txt", "after a restart");
    synced(&b, &server, "B").await;
    until(10, "later/2.txt on a after a restart", || {
        a.join("later/2.txt").exists()
    })
    .await;
    assert_eq!(
        fs::read_to_string(a.join("build/local.tmp")).unwrap(),
        "only here"
    );
}

// 12-14. The command line.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_on_the_same_folder_is_refused() {
    let server = Server::start().await;
    let (_tmp, [a]) = dirs(["a"]);
    write(&a, "ready.txt", "watching");
    let _wa = Watcher::start(&a, &server.url, "A");
    let mut ready = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready && Instant::now() < deadline {
        ready = live_on_server(&server).await.contains_key("ready.txt");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ready, "watch did not sync");
    let mut cmd = Command::new(CLIENT_BIN);
    cmd.args(["sync", s(&a), "--server", &server.url, "--device", "A"]);
    let (status, log) = exits_within(cmd, 10).await;
    let status = status.expect("a second client did not exit within 10 s");
    assert!(!status.success(), "{log}");
    assert!(log.contains("another lbsync-client"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_does_not_panic_the_cli() {
    let server = Server::start().await;
    let (_tmp, [a]) = dirs(["a"]);
    files(&a, "x", 3);
    synced(&a, &server, "A").await;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(CLIENT_BIN)
        .args(["status", s(&a)])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_server_url_fails_fast() {
    let (_tmp, [a]) = dirs(["a"]);
    let mut cmd = Command::new(CLIENT_BIN);
    cmd.args(["watch", s(&a), "--server", "ftp://x"]);
    let (status, log) = exits_within(cmd, 5).await;
    let status = status.unwrap_or_else(|| panic!("watch kept running: {log}"));
    assert!(!status.success(), "{log}");
    assert!(log.contains("ftp://x"), "{log}");
}

/// `cp -a from to`: a copy that keeps modes, times and links, as a person's backup would.
fn cp_a(from: &Path, to: &Path) {
    let cp = Command::new("cp")
        .args(["-a", s(from), s(to)])
        .status()
        .unwrap();
    assert!(cp.success(), "cp -a {} {}", from.display(), to.display());
}
