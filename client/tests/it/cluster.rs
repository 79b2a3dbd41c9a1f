//! Several servers on one shared store (packs on Garage, metadata in PostgreSQL): clients on
//! different servers converge in real time, a conflict between them is decided once, a client
//! fails over when its server is SIGKILLed, GC on one server sweeps nothing live while uploads
//! run through another, and losing one of Garage's three nodes stops nothing.
//!
//! They need the dev cluster (`eval "$(scripts/dev-cluster start DIR)"`); without it they skip,
//! except in CI, where they fail.

#![allow(clippy::unwrap_used)] // tests: a failure is a test failure

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lbsync_testsupport::services;

use crate::procs::{ServerProc, Watcher};
use crate::util::{args, run, seeded, text, tree, write};

/// A shared store: a fresh S3 prefix and a fresh PostgreSQL database, and the servers on it.
struct Cluster {
    _s3: services::S3Service,
    _pg: services::PgService,
    store: String,
    metadata: String,
    tmp: tempfile::TempDir,
}

impl Cluster {
    fn new(test: &str) -> Option<Self> {
        let s3 = services::s3(test)?;
        let pg = services::postgres(test)?;
        let c = Self {
            store: s3.url.clone(),
            metadata: pg.url.clone(),
            _s3: s3,
            _pg: pg,
            tmp: tempfile::tempdir().unwrap(),
        };
        // A minimum grace period short enough for the gc test's 5 s (a store's default is 10m).
        let out = c.admin(&["init", "--min-grace", "4s"]);
        assert!(out.status.success(), "init: {}", text(&out));
        Some(c)
    }

    /// A server process on the shared store.
    fn server(&self, name: &str) -> ServerProc {
        let log = self.tmp.path().join(format!("{name}.log"));
        ServerProc::start_shared(&self.store, &self.metadata, log)
    }

    /// A synced folder's directory.
    fn dir(&self, name: &str) -> PathBuf {
        let d = self.tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// `lbsync-server ARGS` on the shared store (an admin command), to its end.
    fn admin(&self, command: &[&str]) -> std::process::Output {
        let mut a = vec!["--store", &self.store, "--metadata", &self.metadata];
        a.extend_from_slice(command);
        crate::procs::server_command(&a)
    }
}

/// Waits until `cond` holds, polling; fails after `secs` with `explain()`.
fn wait(secs: u64, what: &str, mut cond: impl FnMut() -> bool, explain: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}\n{}",
            explain()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn files(dir: &Path) -> BTreeMap<String, crate::util::Node> {
    tree(dir)
}

#[test]
fn clients_on_two_servers_of_one_store_converge_in_real_time() {
    let Some(c) = Cluster::new("clients_on_two_servers_of_one_store_converge_in_real_time") else {
        return;
    };
    let (s1, s2) = (c.server("s1"), c.server("s2"));
    let (a, b) = (c.dir("a"), c.dir("b"));
    let wa = Watcher::start(&a, &s1.url, "A");
    let wb = Watcher::start(&b, &s2.url, "B");
    let explain = || format!("A:\n{}\nB:\n{}", wa.log(), wb.log());
    write(&a, "from-a.txt", "written on A, served by s1");
    write(&a, "big.bin", seeded(3 << 20, 7));
    wait(30, "A's files on B", || files(&a) == files(&b), explain);
    let started = Instant::now();
    write(&b, "from-b.txt", "written on B, served by s2");
    wait(
        30,
        "B's file on A",
        || a.join("from-b.txt").exists(),
        explain,
    );
    // Through the other server: its LISTEN hears the commit, not a poll.
    eprintln!(
        "a commit through s2 reached A through s1 in {:?}",
        started.elapsed()
    );
    std::fs::remove_file(b.join("from-a.txt")).unwrap();
    wait(
        30,
        "the deletion on A",
        || !a.join("from-a.txt").exists(),
        explain,
    );
    assert_eq!(files(&a), files(&b));
    assert!(wa.stop() && wb.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_between_two_servers_is_decided_once() {
    let Some(c) = Cluster::new("a_conflict_between_two_servers_is_decided_once") else {
        return;
    };
    let (s1, s2) = (c.server("s1"), c.server("s2"));
    let (a, b) = (c.dir("a"), c.dir("b"));
    let sync = |dir: &Path, server: &str, device: &str| {
        args(&[
            "sync",
            dir.to_str().unwrap(),
            "--server",
            server,
            "--device",
            device,
        ])
    };
    write(&a, "notes.txt", "v1");
    assert!(run(sync(&a, &s1.url, "A")).await.status.success());
    assert!(run(sync(&b, &s2.url, "B")).await.status.success());
    assert_eq!(std::fs::read(b.join("notes.txt")).unwrap(), b"v1");
    // Both edit the same version and sync at once, each through its own server.
    write(&a, "notes.txt", "A's edit");
    write(&b, "notes.txt", "B's edit");
    let (ra, rb) = tokio::join!(run(sync(&a, &s1.url, "A")), run(sync(&b, &s2.url, "B")));
    assert!(ra.status.success(), "{}", text(&ra));
    assert!(rb.status.success(), "{}", text(&rb));
    for _ in 0..2 {
        assert!(run(sync(&a, &s1.url, "A")).await.status.success());
        assert!(run(sync(&b, &s2.url, "B")).await.status.success());
    }
    let (ta, tb) = (files(&a), files(&b));
    assert_eq!(ta, tb, "the two folders differ");
    // Exactly one edit won the name; the other is a conflicted copy: both bytes survive.
    let contents: Vec<Vec<u8>> = ta
        .keys()
        .map(|k| std::fs::read(a.join(k)).unwrap())
        .collect();
    assert_eq!(ta.len(), 2, "{ta:?}");
    assert!(contents.contains(&b"A's edit".to_vec()), "{ta:?}");
    assert!(contents.contains(&b"B's edit".to_vec()), "{ta:?}");
    let copies = ta.keys().filter(|k| k.contains("conflict")).count();
    assert_eq!(copies, 1, "{ta:?}");
}

#[test]
fn a_client_fails_over_when_its_server_is_killed() {
    let Some(c) = Cluster::new("a_client_fails_over_when_its_server_is_killed") else {
        return;
    };
    let (mut s1, s2) = (c.server("s1"), c.server("s2"));
    let (a, b) = (c.dir("a"), c.dir("b"));
    // A knows both servers and uses s1 first; B is on s2 only.
    let wa = Watcher::start(&a, &format!("{},{}", s1.url, s2.url), "A");
    let wb = Watcher::start(&b, &s2.url, "B");
    let explain = || format!("A:\n{}\nB:\n{}", wa.log(), wb.log());
    let mut written = Vec::new();
    for i in 0..40 {
        let name = format!("f{i:02}.txt");
        write(&a, &name, format!("file {i} from A"));
        written.push(name);
        if i == 15 {
            s1.kill9();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    wait(
        60,
        "every file A wrote on B",
        || written.iter().all(|n| b.join(n).exists()) && files(&a) == files(&b),
        explain,
    );
    assert!(wa.stop() && wb.stop());
    drop(s2);
    let out = c.admin(&["fsck"]);
    assert!(out.status.success(), "fsck: {}", text(&out));
}

#[test]
fn gc_on_one_server_sweeps_nothing_live_while_uploads_run_through_another() {
    let Some(c) =
        Cluster::new("gc_on_one_server_sweeps_nothing_live_while_uploads_run_through_another")
    else {
        return;
    };
    let (s1, s2) = (c.server("s1"), c.server("s2"));
    let (a, b) = (c.dir("a"), c.dir("b"));
    let wa = Watcher::start(&a, &s1.url, "A");
    let wb = Watcher::start(&b, &s2.url, "B");
    let explain = || format!("A:\n{}\nB:\n{}", wa.log(), wb.log());
    // Garbage for the collection: first versions that their second versions replace.
    for i in 0..8 {
        write(&a, &format!("old{i}.bin"), seeded(300_000, 100 + i));
    }
    wait(
        60,
        "the first versions on B",
        || files(&a) == files(&b),
        explain,
    );
    for i in 0..8 {
        write(&a, &format!("old{i}.bin"), seeded(300_000, 200 + i));
    }
    wait(
        60,
        "the second versions on B",
        || files(&a) == files(&b),
        explain,
    );
    // Older than the grace period below, so the collection can sweep them.
    std::thread::sleep(Duration::from_secs(6));
    let writer = {
        let a = a.clone();
        std::thread::spawn(move || {
            for i in 0..30 {
                write(&a, &format!("g{i:02}.bin"), seeded(200_000, i));
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };
    // Shorter than the store's minimum grace period: refused, nothing collected.
    let out = c.admin(&["gc", "--grace-secs", "3"]);
    assert!(
        !out.status.success() && text(&out).contains("minimum of 4s"),
        "gc under the minimum grace: {}",
        text(&out)
    );
    let mut swept = false;
    for _ in 0..3 {
        let out = c.admin(&[
            "gc",
            "--keep-versions",
            "1",
            "--keep-days",
            "0",
            "--grace-secs",
            "5",
            "--json",
        ]);
        assert!(out.status.success(), "gc: {}", text(&out));
        // The child is this test binary: its harness prints around the report.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json = &stdout[stdout.find('{').unwrap()..=stdout.rfind('}').unwrap()];
        let report: serde_json::Value = serde_json::from_str(json).unwrap();
        swept |= report["swept_chunks"].as_u64().unwrap() > 0;
    }
    assert!(swept, "the collection swept nothing: it tested nothing");
    writer.join().unwrap();
    wait(60, "A's files on B", || files(&a) == files(&b), explain);
    assert!(wa.stop() && wb.stop());
    drop((s1, s2));
    let out = c.admin(&["fsck"]);
    assert!(out.status.success(), "fsck after gc: {}", text(&out));
}

#[test]
fn uploads_and_downloads_go_on_with_one_storage_node_down() {
    let Some(c) = Cluster::new("uploads_and_downloads_go_on_with_one_storage_node_down") else {
        return;
    };
    let s1 = c.server("s1");
    let (a, b) = (c.dir("a"), c.dir("b"));
    let sync = |dir: &Path, device: &str| {
        let out = Command::new(crate::procs::CLIENT_BIN)
            .args(["sync", dir.to_str().unwrap(), "--server", &s1.url])
            .args(["--device", device])
            .output()
            .unwrap();
        assert!(out.status.success(), "sync {device}: {}", text(&out));
    };
    write(&a, "before.bin", seeded(1 << 20, 1));
    sync(&a, "A");
    {
        let _down = services::node_down(3);
        write(&a, "during.bin", seeded(1 << 20, 2));
        sync(&a, "A");
        sync(&b, "B");
        assert_eq!(files(&a), files(&b), "with node 3 down");
    }
    write(&a, "after.bin", seeded(1 << 20, 3));
    sync(&a, "A");
    sync(&b, "B");
    assert_eq!(files(&a), files(&b), "with node 3 back");
}
