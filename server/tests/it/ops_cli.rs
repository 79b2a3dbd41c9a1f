//! Operating the real binary: metrics after a sync, systemd readiness, graceful stops on SIGTERM
//! and SIGHUP, admin commands on a missing store, the locked store's pid, `--json` reports.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use lbsync_proto::{Content, pb};

use crate::cli::{BIN, run_on as run, serve_with};
use crate::util::*;

fn kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// GET http://addr/path over HTTP/1.1: (status line, body).
fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of the sample `name` (with its labels exactly as written) in an exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The metrics address a server logged.
fn metrics_addr(seen: &[String]) -> String {
    seen.iter()
        .find_map(|l| l.split("metrics on http://").nth(1))
        .and_then(|r| r.strip_suffix("/metrics"))
        .expect("the metrics address is logged")
        .to_owned()
}

#[test]
fn metrics_after_a_sync_show_the_counters_moved() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (out, _, err) = run(&store, &["--metrics-listen", "0.0.0.0:0"]);
    assert!(
        !out && err.contains("refusing to serve metrics on 0.0.0.0:0"),
        "{err}"
    );
    let (mut child, _, addr, seen) = serve_with(&store, &["--metrics-listen", "127.0.0.1:0"], &[]);
    let metrics = metrics_addr(&seen);
    let (status, before) = http_get(&metrics, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert_eq!(sample(&before, "lbsync_received_bytes_total"), Some(0.0));
    assert!(http_get(&metrics, "/other").0.contains("404"));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let data = seeded(300_000, 7);
    rt.block_on(async {
        let mut c = connect(addr, None).await;
        handshake(&mut c, "f").await;
        let (m, sent) = upload(&mut c, &data).await;
        assert!(sent > 1);
        committed(
            commit(
                &mut c,
                file_commit("f", "a.bin", &m, 0, Content::Full(m.clone())),
            )
            .await,
        );
        // The same chunks again: all deduplicated.
        let chunks: Vec<_> =
            lbsync_chunkstore::Chunker::new(&data[..], lbsync_chunkstore::ChunkParams::DEFAULT)
                .map(|r| {
                    lbsync_proto::wire::encode_chunk(
                        r.as_ref().unwrap().1.id(),
                        r.unwrap().1.data(),
                    )
                })
                .collect();
        c.put_chunks(tokio_stream::iter([pb::PutChunksRequest {
            folder: "f".into(),
            chunks,
            ..Default::default()
        }]))
        .await
        .unwrap();
        // A commit on a stale base: a conflict.
        let o = commit(
            &mut c,
            file_commit("f", "a.bin", &m, 0, Content::Full(m.clone())),
        )
        .await;
        assert!(matches!(o, lbsync_proto::CommitOutcome::Conflict(_)));
        let e = c
            .get_manifest(pb::GetManifestRequest {
                folder: "f".into(),
                manifest_id: vec![7; 32].into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);

        let (_, after) = http_get(&metrics, "/metrics");
        let n = |name: &str| sample(&after, name).unwrap_or_else(|| panic!("{name} in {after}"));
        assert_eq!(n(r#"lbsync_commits_total{outcome="applied"}"#), 1.0);
        assert_eq!(n(r#"lbsync_commits_total{outcome="conflict"}"#), 1.0);
        assert_eq!(
            n(r#"lbsync_chunks_received_total{outcome="stored"}"#),
            sent as f64
        );
        assert_eq!(
            n(r#"lbsync_chunks_received_total{outcome="deduplicated"}"#),
            sent as f64
        );
        assert!(
            n("lbsync_received_bytes_total") > 2.0 * data.len() as f64,
            "{after}"
        );
        assert!(n("lbsync_sent_bytes_total") > 0.0);
        assert_eq!(n("lbsync_connected_clients"), 1.0);
        assert_eq!(
            n(r#"lbsync_rpc_duration_seconds_count{method="/lbsync.v1.Sync/Commit"}"#),
            2.0
        );
        assert_eq!(
            n(r#"lbsync_rpc_errors_total{method="/lbsync.v1.Sync/GetManifest",code="NotFound"}"#),
            1.0
        );
    });
    drop(rt);
    kill(child.0.id(), "TERM");
    assert!(child.0.wait().unwrap().success());
}

/// READY=1 on NOTIFY_SOCKET once it serves; then `signal` while an upload is in flight: the
/// upload finishes, STOPPING=1 arrives, the process exits 0 and leaves no pid file.
fn graceful_stop_on(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (mut child, _, addr, seen) = serve_with(
        &store,
        &["--metrics-listen", "127.0.0.1:0"],
        &[("NOTIFY_SOCKET", sock_path.as_os_str())],
    );
    let metrics = metrics_addr(&seen);
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(store.join("server.pid").exists());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let data = seeded(200_000, 3);
    rt.block_on(async {
        let mut c = connect(addr, None).await;
        handshake(&mut c, "f").await;
        let chunks: Vec<_> =
            lbsync_chunkstore::Chunker::new(&data[..], lbsync_chunkstore::ChunkParams::DEFAULT)
                .map(|r| {
                    let (_, ch) = r.unwrap();
                    lbsync_proto::wire::encode_chunk(ch.id(), ch.data())
                })
                .collect();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::PutChunksRequest {
            folder: "f".into(),
            chunks: chunks[..1].to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        let scrape = |m: String| async move {
            let text = tokio::task::spawn_blocking(move || http_get(&m, "/metrics").1)
                .await
                .unwrap();
            sample(&text, "lbsync_received_bytes_total").unwrap()
        };
        let base = scrape(metrics.clone()).await;
        let mut upload = c.clone();
        let call = tokio::spawn(async move {
            upload
                .put_chunks(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        // The stream is open on the server before the signal: its first message has arrived.
        let first = chunks[0].data.len() as f64;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if scrape(metrics.clone()).await > base + first {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the upload reaches the server"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        kill(child.0.id(), signal);
        let n = tokio::task::spawn_blocking({
            let sock = sock.try_clone().unwrap();
            move || {
                let mut buf = [0u8; 4096];
                let n = sock.recv(&mut buf).expect("STOPPING=1");
                String::from_utf8_lossy(&buf[..n]).into_owned()
            }
        })
        .await
        .unwrap();
        assert!(n.lines().any(|l| l == "STOPPING=1"), "{n:?}");
        tx.send(pb::PutChunksRequest {
            folder: "f".into(),
            chunks: chunks[1..].to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        drop(tx);
        let answer = call
            .await
            .unwrap()
            .expect("the in-flight upload finishes")
            .into_inner();
        assert_eq!(answer.stored as usize, chunks.len());
    });
    drop(rt);
    let status = child.0.wait().unwrap();
    assert!(status.success(), "exits 0 after SIG{signal}: {status:?}");
    assert!(
        !store.join("server.pid").exists(),
        "the pid file goes with the server"
    );
    // What the upload stored is there.
    let (ok, out, err) = run(&store, &["stats", "--json"]);
    assert!(ok, "{err}");
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(stats["chunks"].as_u64().unwrap() >= 2, "{stats}");
}

#[test]
fn sigterm_stops_gracefully_after_in_flight_work() {
    graceful_stop_on("TERM");
}

#[test]
fn sighup_stops_gracefully_after_in_flight_work() {
    graceful_stop_on("HUP");
}

#[test]
fn admin_commands_on_a_missing_store_fail_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo/store");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let commands: &[&[&str]] = &[
        &["fsck"],
        &["fsck", "--repair"],
        &["fsck", "--json"],
        &["gc"],
        &["gc", "--dry-run"],
        &["stats"],
        &["stats", "--json"],
        &["user", "list"],
        &["user", "add", "alice"],
        &["token", "create", "--user", "alice"],
        &["token", "revoke", "0123abcd"],
        &["share", "f", "--with", "alice"],
        &["unshare", "f", "--with", "alice"],
        &["cert", "--name", "localhost"],
    ];
    for store in [&missing, &empty] {
        for args in commands {
            let (ok, out, err) = run(store, args);
            assert!(!ok, "{args:?} on {}: {out}", store.display());
            assert!(
                err.contains(&format!("there is no store at {}", store.display()))
                    && err.contains("lbsync-server init --store"),
                "{args:?}: {err}"
            );
        }
    }
    assert!(!dir.path().join("typo").exists(), "nothing was created");
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "nothing was created"
    );

    let (ok, out, err) = run(&missing, &["init"]);
    assert!(ok && out.contains("created a store"), "{out}{err}");
    let (ok, _, err) = run(&missing, &["init"]);
    assert!(!ok && err.contains("already"), "{err}");
    let (ok, out, err) = run(&missing, &["stats"]);
    assert!(ok && out.contains("folders:        0"), "{out}{err}");
}

#[test]
fn a_locked_store_names_the_serving_pid() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (mut child, _, _, _) = serve_with(&store, &[], &[]);
    let pid = child.0.id();
    for args in [&["stats"][..], &["fsck", "--repair"], &["gc"], &["init"]] {
        let (ok, _, err) = run(&store, args);
        assert!(!ok, "{args:?}");
        if args == ["init"] {
            assert!(err.contains("already"), "{err}");
            continue;
        }
        assert!(
            err.contains(&format!("locked by lbsync-server pid {pid}"))
                && err.contains(&format!("kill -TERM {pid}")),
            "{args:?}: {err}"
        );
        assert!(!err.contains("os error"), "{err}");
    }
    // A second server on the same store.
    let out = Command::new(BIN)
        .args([
            "--store",
            store.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("pid {pid}")),
        "{err}"
    );
    kill(pid, "TERM");
    assert!(child.0.wait().unwrap().success());
}

/// RFC 3339 in UTC, to the second: `2026-12-02T04:05:06Z`.
fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && s.ends_with('Z')
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && s.chars().filter(char::is_ascii_digit).count() == 14
}

#[test]
fn json_reports_of_fsck_gc_and_stats_parse() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (mut child, _, addr, _) = serve_with(&store, &[], &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let data = seeded(100_000, 11);
    rt.block_on(async {
        let mut c = connect(addr, None).await;
        handshake(&mut c, "docs").await;
        let (m, _) = upload(&mut c, &data).await;
        committed(
            commit(
                &mut c,
                file_commit("docs", "a.bin", &m, 0, Content::Full(m.clone())),
            )
            .await,
        );
    });
    drop(rt);
    kill(child.0.id(), "TERM");
    assert!(child.0.wait().unwrap().success());

    let json = |args: &[&str]| -> (bool, serde_json::Value) {
        let (ok, out, err) = run(&store, args);
        let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}{err}"));
        (ok, v)
    };
    let (ok, stats) = json(&["stats", "--json"]);
    assert!(ok);
    assert_eq!(stats["folders"], 1);
    assert_eq!(stats["files"], 1);
    assert_eq!(stats["logical_bytes"], data.len() as u64);
    assert!(stats["disk_bytes"].as_u64().unwrap() > 0);
    assert_eq!(stats["store_id"].as_str().unwrap().len(), 32, "{stats}");
    assert!(is_rfc3339_utc(stats["at"].as_str().unwrap()), "{stats}");

    let (ok, fsck) = json(&["fsck", "--json"]);
    assert!(ok, "{fsck}");
    assert_eq!(fsck["clean"], true);
    assert_eq!(fsck["files_checked"], 1);
    assert_eq!(fsck["problems"], serde_json::json!([]));
    assert!(is_rfc3339_utc(fsck["at"].as_str().unwrap()));

    let (ok, gc) = json(&["gc", "--dry-run", "--json"]);
    assert!(ok);
    assert_eq!(gc["dry_run"], true);
    assert_eq!(gc["versions_kept"], 1);
    assert_eq!(gc["swept_chunks"], 0);
    let (ok, gc) = json(&["gc", "--json", "--grace-secs", "0"]);
    assert!(ok);
    assert_eq!(gc["dry_run"], false);
    assert!(gc["bytes_reclaimed"].is_u64());

    // A torn tail: a machine-readable problem, and a failing exit code.
    let mut packs: Vec<_> = std::fs::read_dir(store.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    packs.sort();
    std::fs::OpenOptions::new()
        .append(true)
        .open(packs.last().unwrap())
        .unwrap()
        .write_all(b"LBCR torn")
        .unwrap();
    let (ok, fsck) = json(&["fsck", "--json"]);
    assert!(!ok, "{fsck}");
    assert_eq!(fsck["clean"], false);
    let p = &fsck["problems"][0];
    assert_eq!(p["kind"], "torn_tail", "{fsck}");
    assert_eq!(p["bytes"], 9);
    assert!(p["pack"].is_u64() && p["offset"].is_u64() && p["message"].is_string());
}

/// Reads a Changes replay from `cursor` until it catches up: (paths listed, the last message's
/// expired_seq, every message's expired_seq).
async fn replay(c: &mut Client, folder: &str, cursor: u64) -> (Vec<String>, u64, Vec<u64>) {
    let mut stream = c
        .changes(pb::ChangesRequest {
            folder: folder.into(),
            cursor,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut paths, mut horizons) = (Vec::new(), Vec::new());
    loop {
        let msg = stream.message().await.unwrap().unwrap();
        horizons.push(msg.expired_seq);
        paths.extend(
            msg.entries
                .iter()
                .map(|e| String::from_utf8_lossy(&e.path).into_owned()),
        );
        if msg.caught_up {
            paths.sort();
            return (paths, msg.expired_seq, horizons);
        }
    }
}

/// `gc --keep-tombstones AGE` forgets deletions older than AGE, with their path's versions and
/// the chunks only those held, and nothing else; a Changes replay then tells every client the
/// horizon, so one whose cursor is below it knows to re-scan. The default (180 days) forgets
/// nothing recent, and a duration that does not read is refused with the forms that do.
#[test]
fn gc_expires_tombstones_past_their_retention_and_changes_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (mut child, _, addr, _) = serve_with(&store, &[], &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let gone_seq = rt.block_on(async {
        let mut c = connect(addr, None).await;
        handshake(&mut c, "f").await;
        for (i, p) in ["gone.bin", "kept.bin"].iter().enumerate() {
            let (m, _) = upload(&mut c, &seeded(150_000, 20 + i as u64)).await;
            committed(commit(&mut c, file_commit("f", p, &m, 0, Content::Full(m.clone()))).await);
        }
        let tombstone = lbsync_proto::CommitRequest {
            folder: "f".into(),
            entry: lbsync_proto::Entry::tombstone(
                lbsync_proto::SyncPath::new("gone.bin").unwrap(),
                lbsync_proto::EntryKind::File,
                "test",
            ),
            base_version: 1,
            content: None,
        };
        let gone = committed(commit(&mut c, tombstone.into()).await);
        assert_eq!(replay(&mut c, "f", 0).await.1, 0, "nothing expired yet");
        gone.seq
    });
    kill(child.0.id(), "TERM");
    assert!(child.0.wait().unwrap().success());

    let gc = |args: &[&str]| -> serde_json::Value {
        let (ok, out, err) = run(&store, args);
        assert!(ok, "{args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}{err}"))
    };
    // Within the default retention, and in a dry run, nothing goes.
    let v = gc(&["gc", "--json", "--grace-secs", "0"]);
    assert_eq!(v["tombstones_expired"], 0, "{v}");
    let v = gc(&["gc", "--json", "--dry-run", "--keep-tombstones", "0s"]);
    assert_eq!(v["tombstones_expired"], 1, "{v}");
    assert_eq!(v["swept_chunks"], 0, "{v}");
    let (ok, _, err) = run(&store, &["gc", "--keep-tombstones", "3 days"]);
    assert!(!ok);
    assert!(
        err.contains("cannot read \"3 days\" as a duration") && err.contains("180d"),
        "{err}"
    );
    let (ok, help, _) = run(&store, &["gc", "--help"]);
    assert!(
        ok && help.contains("--keep-tombstones <AGE>") && help.contains("180d"),
        "{help}"
    );

    let v = gc(&[
        "gc",
        "--json",
        "--keep-tombstones",
        "0s",
        "--grace-secs",
        "0",
    ]);
    assert_eq!(v["tombstones_expired"], 1, "{v}");
    assert!(
        v["swept_chunks"].as_u64().unwrap() > 0,
        "the deleted file's chunks go: {v}"
    );
    let (ok, text, err) = run(&store, &["gc", "--keep-tombstones", "0s"]);
    assert!(
        ok && text.contains("forget 0 tombstones past their retention"),
        "{text}{err}"
    );

    let (mut child, _, addr, _) = serve_with(&store, &[], &[]);
    rt.block_on(async {
        let mut c = connect(addr, None).await;
        handshake(&mut c, "f").await;
        for cursor in 0..=gone_seq {
            let (paths, horizon, all) = replay(&mut c, "f", cursor).await;
            assert_eq!(horizon, gone_seq, "from {cursor}");
            assert!(all.iter().all(|h| *h == gone_seq));
            assert!(
                !paths.contains(&"gone.bin".to_owned()),
                "from {cursor}: {paths:?}"
            );
        }
        assert_eq!(replay(&mut c, "f", 0).await.0, ["kept.bin"]);
        // The live file is still whole.
        let m = lbsync_chunkstore::Manifest::new(
            lbsync_chunkstore::Chunker::new(
                &seeded(150_000, 21)[..],
                lbsync_chunkstore::ChunkParams::DEFAULT,
            )
            .map(|r| r.unwrap().1.chunk_ref())
            .collect(),
        );
        assert_eq!(download(&mut c, &m).await, seeded(150_000, 21));
    });
    drop(rt);
    kill(child.0.id(), "TERM");
    assert!(child.0.wait().unwrap().success());
}
