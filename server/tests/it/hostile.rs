//! A hostile client, built on the generated stubs, sends every kind of bad input in turn to one
//! server while another client's data sits in it. Each gets the right status with a message that
//! says what was wrong; afterwards the server still serves, the other client's file is intact
//! byte for byte, and fsck finds the store clean.

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use lbsync_chunkstore::{Chunk, ChunkId, Manifest, PackStore};
use lbsync_proto::wire::encode_chunk;
use lbsync_proto::{Content, ids_to_bytes, pb};
use lbsync_server::{ServerConfig, Tokens};
use tonic::{Code, Status};

use crate::util::*;

/// Asserts the status code and that the message names what was wrong.
#[track_caller]
fn refused(what: &str, res: Result<impl std::fmt::Debug, Status>, code: Code, says: &str) {
    let err = res.expect_err(what);
    assert_eq!(err.code(), code, "{what}: {err:?}");
    assert!(
        err.message().contains(says),
        "{what}: the message should say {says:?}: {}",
        err.message()
    );
}

#[tokio::test]
async fn a_hostile_client_gets_clear_errors_and_harms_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        tokens: Tokens::parse("victim-token\nhostile-token\n"),
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;

    // The victim's file.
    let mut victim = server.client_with_token(Some("victim-token")).await;
    handshake(&mut victim, "default").await;
    let data = seeded(1 << 20, 1);
    let (vm, _) = upload(&mut victim, &data).await;
    let ventry = committed(
        commit(
            &mut victim,
            file_commit(
                "default",
                "victim/data.bin",
                &vm,
                0,
                Content::Full(vm.clone()),
            ),
        )
        .await,
    );

    let mut c = server.client_with_token(Some("hostile-token")).await;
    handshake(&mut c, "default").await;
    let (m, _) = upload(&mut c, b"hello").await;

    // Chunk bytes that are not what their id says.
    let good = Chunk::new(seeded(3000, 9));
    let mut forged = encode_chunk(good.id(), good.data());
    forged.data = Bytes::from(seeded(3000, 10));
    let res = c
        .put_chunks(tokio_stream::iter([pb::PutChunksRequest {
            chunks: vec![forged],
            ..Default::default()
        }]))
        .await;
    refused(
        "forged chunk",
        res,
        Code::InvalidArgument,
        &good.id().to_string(),
    );

    // A chunk over the store's maximum chunk size.
    let huge = Chunk::new(seeded((1 << 20) + 2, 11));
    let res = c
        .put_chunks(tokio_stream::iter([pb::PutChunksRequest {
            chunks: vec![encode_chunk(huge.id(), huge.data())],
            ..Default::default()
        }]))
        .await;
    refused(
        "huge chunk",
        res,
        Code::InvalidArgument,
        "over the maximum chunk size",
    );

    // Deltas: against a chunk the server does not have; forged against one it has (the victim's,
    // which it must not be able to alter); with too many bases; uncompressed.
    let victim_chunk = vm.chunks()[0].id;
    let unknown_base = Chunk::new(seeded(3000, 13));
    let edited = Chunk::new([unknown_base.data().as_ref(), b"!"].concat());
    let as_delta = |base: &Chunk| {
        lbsync_proto::wire::encode_chunk_against(
            edited.id(),
            edited.data(),
            &[base.id()],
            base.data(),
        )
    };
    let mut delta = as_delta(&unknown_base);
    delta.base_ids = ids_to_bytes(&[unknown_base.id()]);
    let mut bad_deltas = vec![(delta, Code::NotFound, "is not on the server")];
    // Made against another base: against the victim's chunk it inflates to other bytes.
    let mut forged = as_delta(&unknown_base);
    forged.base_ids = ids_to_bytes(&[victim_chunk]);
    let edited_id = edited.id().to_string();
    bad_deltas.push((forged, Code::InvalidArgument, &edited_id));
    let mut many = as_delta(&unknown_base);
    many.base_ids = ids_to_bytes(&[victim_chunk; 5]);
    bad_deltas.push((
        many,
        Code::InvalidArgument,
        "5 delta base chunks, the limit is 4",
    ));
    let mut raw = encode_chunk(edited.id(), edited.data());
    raw.base_ids = ids_to_bytes(&[victim_chunk]);
    bad_deltas.push((raw, Code::InvalidArgument, "a delta is always compressed"));
    for (chunk, code, says) in bad_deltas {
        let res = c
            .put_chunks(tokio_stream::iter([pb::PutChunksRequest {
                chunks: vec![chunk],
                ..Default::default()
            }]))
            .await;
        refused(&format!("delta ({says})"), res, code, says);
    }

    // Offered bases that do not line up with the chunks asked for, or too many of them.
    for (bases, says) in [
        (vec![Bytes::new(); 2], "delta bases for 2 of 1 chunks"),
        (
            vec![ids_to_bytes(&[victim_chunk; 5])],
            "5 delta bases for one chunk, the limit is 4",
        ),
    ] {
        let res = c
            .get_chunks(pb::GetChunksRequest {
                ids: ids_to_bytes(&[victim_chunk]),
                bases,
                ..Default::default()
            })
            .await;
        refused(says, res.map(|_| ()), Code::InvalidArgument, says);
    }

    // Batches: one bad path fails the whole batch; too many commits; a bad folder name.
    let mut bad_path = file_commit("default", "ok", &m, 0, Content::Known(m.id()));
    bad_path.entry.as_mut().unwrap().path = Bytes::from_static(b"../escape");
    for (req, says) in [
        (
            pb::CommitBatchRequest {
                folder: "default".into(),
                device: "hostile".into(),
                commits: vec![
                    file_commit("default", "fine", &m, 0, Content::Known(m.id())),
                    bad_path,
                ],
            },
            "path",
        ),
        (
            pb::CommitBatchRequest {
                folder: "default".into(),
                device: "hostile".into(),
                commits: vec![pb::CommitRequest::default(); 4097],
            },
            "4097 commits in one CommitBatch, the limit is 4096",
        ),
        (
            pb::CommitBatchRequest {
                folder: "../x".into(),
                ..Default::default()
            },
            "folder",
        ),
    ] {
        let res = c.commit_batch(req).await;
        refused(says, res, Code::InvalidArgument, says);
    }

    // Paths: `..`, absolute, NUL, and the other malformed kinds; one overwriting the victim's
    // file by a detour.
    for bad in [
        &b"../etc/passwd"[..],
        b"victim/../victim/data.bin",
        b"/abs",
        b"/etc/passwd",
        b"a\0b",
        b"a//b",
        b"",
        b"a/\xff",
    ] {
        let mut req = file_commit("default", "ok", &m, 0, Content::Known(m.id()));
        req.entry.as_mut().unwrap().path = Bytes::copy_from_slice(bad);
        let res = c.commit(req).await;
        refused(&format!("path {bad:?}"), res, Code::InvalidArgument, "path");
    }

    // A 5 GB declared size for a 5-byte file.
    let mut lying = file_commit("default", "big", &m, 0, Content::Full(m.clone()));
    lying.entry.as_mut().unwrap().size = 5 << 30;
    let res = c.commit(lying).await;
    refused(
        "5 GB size",
        res,
        Code::InvalidArgument,
        "declares 5368709120 bytes",
    );

    // A message over the size limit (70 MB of ids against 64 MiB).
    let ids: Vec<ChunkId> = (0..2_200_000u32)
        .map(|i| ChunkId::of(&i.to_le_bytes()))
        .collect();
    let res = c
        .missing_chunks(pb::MissingChunksRequest {
            ids: ids_to_bytes(&ids),
            ..Default::default()
        })
        .await;
    refused("oversized message", res, Code::OutOfRange, "too large");

    // A commit of chunks never uploaded, over the victim's path.
    let never: Vec<Chunk> = (0..3).map(|i| Chunk::new(seeded(5000, 100 + i))).collect();
    let ghost = Manifest::new(never.iter().map(Chunk::chunk_ref).collect());
    let res = c
        .commit(file_commit(
            "default",
            "victim/data.bin",
            &ghost,
            ventry.version,
            Content::Full(ghost.clone()),
        ))
        .await;
    refused(
        "ghost chunks",
        res,
        Code::FailedPrecondition,
        "lacks 3 chunk",
    );
    // The same in a batch is refused on its own, naming the chunks.
    let res = c
        .commit_batch(pb::CommitBatchRequest {
            folder: "default".into(),
            device: "hostile".into(),
            commits: vec![file_commit(
                "default",
                "victim/data.bin",
                &ghost,
                ventry.version,
                Content::Full(ghost.clone()),
            )],
        })
        .await
        .unwrap()
        .into_inner();
    let outcome = lbsync_proto::BatchOutcome::try_from(res.results[0].clone()).unwrap();
    assert_eq!(
        outcome,
        lbsync_proto::BatchOutcome::MissingChunks(ghost.chunks().iter().map(|c| c.id).collect())
    );

    // A wrong token, and none.
    for token in [Some("guess"), None] {
        let mut intruder = server.client_with_token(token).await;
        let res = intruder
            .get_chunks(pb::GetChunksRequest {
                ids: ids_to_bytes(&[vm.chunks()[0].id]),
                ..Default::default()
            })
            .await;
        refused(
            "wrong token",
            res.map(|_| ()),
            Code::Unauthenticated,
            "token",
        );
    }

    // A Changes cursor in the future; an unknown folder; a wrong protocol; a bad folder name.
    let res = c
        .changes(pb::ChangesRequest {
            folder: "default".into(),
            cursor: 1_000_000,
            ..Default::default()
        })
        .await;
    refused("future cursor", res.map(|_| ()), Code::OutOfRange, "cursor");
    let res = c
        .changes(pb::ChangesRequest {
            folder: "nope".into(),
            cursor: 0,
            ..Default::default()
        })
        .await;
    refused("unknown folder", res.map(|_| ()), Code::NotFound, "nope");
    for (version, folder, code) in [
        (99, "default", Code::FailedPrecondition),
        (
            lbsync_proto::PROTOCOL_VERSION,
            "../x",
            Code::InvalidArgument,
        ),
    ] {
        let res = c
            .handshake(pb::HandshakeRequest {
                protocol_version: version,
                folder: folder.into(),
                device: "x".into(),
            })
            .await;
        refused("bad handshake", res, code, "");
    }

    // Garbage bytes on the socket: random junk, and junk after a valid HTTP/2 preface.
    for garbage in [
        seeded(4096, 7),
        [&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], &seeded(4096, 8)].concat(),
    ] {
        let addr = server.addr;
        let closed = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(&garbage);
            // The server answers with an error and closes; it never hangs on to the connection.
            let mut sink = Vec::new();
            // Closed: an end of stream, or a reset (it closed with our garbage unread).
            match s.read_to_end(&mut sink) {
                Ok(_) => true,
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            }
        })
        .await
        .unwrap();
        assert!(closed, "the server kept a connection of garbage open");
    }

    // The server still serves, nothing bad landed, and the victim's file is intact.
    let (m2, _) = upload(&mut c, b"still works").await;
    committed(
        commit(
            &mut c,
            file_commit("default", "ok", &m2, 0, Content::Full(m2.clone())),
        )
        .await,
    );
    let hs = handshake(&mut victim, "default").await;
    assert_eq!(
        hs.head, 2,
        "the victim's commit and the last good one, nothing else"
    );
    assert_eq!(download(&mut victim, &vm).await, data);
    assert!(!dir.path().join("etc").exists());
    server.stop().await;

    let store = PackStore::open(dir.path()).unwrap();
    let report = lbsync_server::admin::fsck(&store, false).unwrap();
    assert!(report.is_clean(), "{report}");
}

/// `.lbsync/` holds each client's private state: no commit may name it, alone or in a batch, as a
/// file, a directory or a deletion, and a refused one changes nothing.
#[tokio::test]
async fn commits_inside_the_state_directory_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    handshake(&mut c, "default").await;
    let (m, _) = upload(&mut c, b"{\"device\": \"someone else's\"}").await;
    committed(
        commit(
            &mut c,
            file_commit("default", "fine.txt", &m, 0, Content::Full(m.clone())),
        )
        .await,
    );
    let head = handshake(&mut c, "default").await.head;

    for reserved in [&b".lbsync/state.json"[..], b".lbsync", b".lbsync/tmp/x"] {
        let as_file = || {
            let mut req = file_commit("default", "x", &m, 0, Content::Known(m.id()));
            req.entry.as_mut().unwrap().path = Bytes::copy_from_slice(reserved);
            req
        };
        let as_dir = {
            let mut req: pb::CommitRequest = lbsync_proto::CommitRequest {
                folder: "default".into(),
                entry: lbsync_proto::Entry::dir(lbsync_proto::SyncPath::new("x").unwrap(), "h"),
                base_version: 0,
                content: None,
            }
            .into();
            req.entry.as_mut().unwrap().path = Bytes::copy_from_slice(reserved);
            req
        };
        let what = String::from_utf8_lossy(reserved);
        for req in [as_file(), as_dir.clone()] {
            let res = c.commit(req).await;
            refused(&what, res, Code::InvalidArgument, ".lbsync/");
        }
        let res = c
            .commit_batch(pb::CommitBatchRequest {
                folder: "default".into(),
                device: "hostile".into(),
                commits: vec![
                    file_commit("default", "also-fine", &m, 0, Content::Known(m.id())),
                    as_file(),
                ],
            })
            .await;
        refused(&what, res, Code::InvalidArgument, "never syncs");
        let res = c
            .history(pb::HistoryRequest {
                folder: "default".into(),
                path: Bytes::copy_from_slice(reserved),
                version: 0,
                raw_path: Default::default(),
            })
            .await;
        refused(&what, res, Code::InvalidArgument, ".lbsync/");
    }

    assert_eq!(
        handshake(&mut c, "default").await.head,
        head,
        "nothing was committed"
    );
    let mut stream = c
        .changes(pb::ChangesRequest {
            folder: "default".into(),
            cursor: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let paths: Vec<_> = first.entries.iter().map(|e| e.path.clone()).collect();
    assert_eq!(paths, [bytes("fine.txt")]);
    server.stop().await;
}

/// The journal and the current entries of `folder`, to show a refusal changed nothing.
#[allow(clippy::unwrap_used)] // a test helper: a failure is a test failure
async fn folder_state(c: &mut Client, folder: &str) -> (u64, Vec<(String, u64)>) {
    let head = handshake(c, folder).await.head;
    let mut stream = c
        .changes(pb::ChangesRequest {
            folder: folder.into(),
            cursor: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut entries = Vec::new();
    loop {
        let msg = stream.message().await.unwrap().expect("caught up first");
        for e in msg.entries {
            let e = lbsync_proto::Entry::try_from(e).unwrap();
            entries.push((e.path.to_string(), e.version));
        }
        if msg.caught_up {
            break;
        }
    }
    entries.sort();
    (head, entries)
}

/// A delta that copies the base's `n` chunks `times` times: a few bytes that would build
/// `n * times` refs.
fn delta_bomb(base: &Manifest, times: usize) -> Content {
    use lbsync_chunkstore::{DeltaOp, ManifestDelta};
    let n = base.chunks().len() as u32;
    Content::Delta {
        base: base.id(),
        delta: ManifestDelta {
            ops: vec![DeltaOp::Copy { start: 0, count: n }; times],
        },
    }
}

/// A manifest of `count` refs of `len` bytes to chunks nobody has.
fn fake_manifest(count: usize, len: u32) -> Manifest {
    Manifest::new(
        (0..count)
            .map(|i| lbsync_chunkstore::ChunkRef {
                id: ChunkId::of(&i.to_le_bytes()),
                len,
            })
            .collect(),
    )
}

/// Each way of making the server do far more work than the request's size is refused, quickly,
/// with INVALID_ARGUMENT saying what was wrong, and changes nothing: a delta that would grow a
/// manifest past what its file allows or past the per-commit limit, a manifest whose refs do
/// not fit its file, a batch whose commits build too much together, a device name with control
/// characters. History answers are capped and say so.
#[tokio::test]
async fn amplifying_requests_are_refused_before_any_work_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let limits = lbsync_server::Limits {
        max_manifest_refs: 1000,
        max_batch_refs: 2000,
        max_history: 3,
        ..Default::default()
    };
    let config = ServerConfig {
        limits,
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    let mut c = server.client().await;
    let hs = handshake(&mut c, "default").await;
    assert_eq!(
        (hs.max_manifest_refs, hs.max_batch_refs, hs.max_history),
        (1000, 2000, 3),
        "the limits are advertised"
    );
    let (m, _) = upload(&mut c, &seeded(256 << 10, 21)).await;
    assert!(m.chunks().len() > 4, "{}", m.chunks().len());
    for v in 0..5 {
        let content = if v == 0 {
            Content::Full(m.clone())
        } else {
            Content::Known(m.id())
        };
        committed(commit(&mut c, file_commit("default", "base.bin", &m, v, content)).await);
    }
    let before = folder_state(&mut c, "default").await;

    let started = std::time::Instant::now();
    let with_size = |mut req: pb::CommitRequest, size: u64| {
        req.entry.as_mut().unwrap().size = size;
        req
    };
    let n = m.chunks().len() as u64;
    // 4096 copies of the base in a few tens of KB, declared at the base's size.
    let req = with_size(
        file_commit("default", "bomb", &m, 0, delta_bomb(&m, 4096)),
        m.size(),
    );
    assert!(prost::Message::encoded_len(&req) < 100_000);
    refused(
        "delta bomb",
        c.commit(req).await,
        Code::InvalidArgument,
        "at most",
    );
    // The same declared at a size that would allow it: over the per-commit limit.
    let req = with_size(
        file_commit("default", "bomb", &m, 0, delta_bomb(&m, 4096)),
        m.size() * 4096,
    );
    refused(
        "delta bomb of a declared huge file",
        c.commit(req).await,
        Code::InvalidArgument,
        &format!("{} chunks, over the limit of 1000", n * 4096),
    );
    // A full manifest whose refs do not add up to the declared size, or do not fit the
    // chunking parameters, is refused before the server asks for its chunks.
    let req = with_size(
        file_commit("default", "short", &m, 0, Content::Full(m.clone())),
        m.size() + 1,
    );
    refused(
        "size mismatch",
        c.commit(req).await,
        Code::InvalidArgument,
        "but its manifest holds",
    );
    let tiny = fake_manifest(2, 70_000);
    let req = file_commit("default", "tiny", &tiny, 0, Content::Full(tiny.clone()));
    refused(
        "tiny refs",
        c.commit(req).await,
        Code::InvalidArgument,
        "outside 2048..=65536",
    );
    let many = fake_manifest(1001, 8192);
    let req = file_commit("default", "many", &many, 0, Content::Full(many.clone()));
    refused(
        "too many refs",
        c.commit(req).await,
        Code::InvalidArgument,
        "over the limit of 1000",
    );
    // A batch that builds too much together is refused whole.
    let big = fake_manifest(900, 8192);
    let batch = pb::CommitBatchRequest {
        folder: "default".into(),
        device: "hostile".into(),
        commits: (0..3)
            .map(|i| {
                file_commit(
                    "default",
                    &format!("b{i}"),
                    &big,
                    0,
                    Content::Full(big.clone()),
                )
            })
            .collect(),
    };
    refused(
        "batch over its budget",
        c.commit_batch(batch).await,
        Code::InvalidArgument,
        "2700 manifest refs, over the limit of 2000",
    );
    // A batch of bombs: the first is refused, none builds anything.
    let batch = pb::CommitBatchRequest {
        folder: "default".into(),
        device: "hostile".into(),
        commits: (0..16)
            .map(|i| {
                with_size(
                    file_commit("default", &format!("b{i}"), &m, 0, delta_bomb(&m, 1)),
                    m.size() + 1,
                )
            })
            .collect(),
    };
    let answer = c.commit_batch(batch).await.unwrap().into_inner();
    for r in answer.results {
        let o = lbsync_proto::BatchOutcome::try_from(r).unwrap();
        assert!(
            matches!(&o, lbsync_proto::BatchOutcome::Invalid(why) if why.contains("add up to")),
            "{o:?}"
        );
    }
    // A device name with a control character.
    let mut req = file_commit("default", "dev", &m, 0, Content::Known(m.id()));
    req.entry.as_mut().unwrap().device = "evil\u{1b}[2J".into();
    refused(
        "device name",
        c.commit(req).await,
        Code::InvalidArgument,
        "control character",
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "refusals take no real work: {:?}",
        started.elapsed()
    );
    assert_eq!(
        folder_state(&mut c, "default").await,
        before,
        "nothing changed"
    );

    // History lists the newest `max_history` versions and says there are more.
    let h = c
        .history(pb::HistoryRequest {
            folder: "default".into(),
            path: bytes("base.bin"),
            version: 0,
            raw_path: Default::default(),
        })
        .await
        .unwrap()
        .into_inner();
    let versions: Vec<u64> = h.versions.iter().map(|v| v.version).collect();
    assert_eq!((versions, h.truncated), (vec![5, 4, 3], true));
    server.stop().await;
}

/// While a hostile client sends amplification attempts as fast as it can on its own token,
/// another user's commits all succeed (function, not timing: latency is measured by the
/// `hostile` bench).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_commits_succeed_while_a_hostile_client_floods() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        tokens: Tokens::parse("honest-token\nhostile-token\n"),
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    let mut h = server.client_with_token(Some("hostile-token")).await;
    handshake(&mut h, "default").await;
    let (m, _) = upload(&mut h, &seeded(128 << 10, 31)).await;
    committed(
        commit(
            &mut h,
            file_commit("default", "base", &m, 0, Content::Full(m.clone())),
        )
        .await,
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flooders = Vec::new();
    for k in 0..4 {
        let (mut h, m, stop) = (h.clone(), m.clone(), stop.clone());
        flooders.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut req = file_commit(
                    "default",
                    &format!("bomb{k}"),
                    &m,
                    0,
                    delta_bomb(&m, 1 << 14),
                );
                req.entry.as_mut().unwrap().size = m.size();
                let res = h.commit(req).await;
                assert_eq!(res.unwrap_err().code(), Code::InvalidArgument);
                sent += 1;
            }
            sent
        }));
    }
    let mut c = server.client_with_token(Some("honest-token")).await;
    handshake(&mut c, "default").await;
    for i in 0..20u64 {
        let (fm, _) = upload(&mut c, &seeded(20_000, 100 + i)).await;
        committed(
            commit(
                &mut c,
                file_commit(
                    "default",
                    &format!("honest/{i}"),
                    &fm,
                    0,
                    Content::Full(fm.clone()),
                ),
            )
            .await,
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut refused = 0;
    for f in flooders {
        refused += f.await.unwrap();
    }
    assert!(refused > 0);
    let (_, entries) = folder_state(&mut c, "default").await;
    assert_eq!(
        entries.len(),
        21,
        "the base and the honest commits, no bomb: {entries:?}"
    );
    server.stop().await;
}

/// A replay from further behind than the journal is read pages through the folder: messages of
/// bounded size, the request's cursor until the last, which carries the head; the client's
/// collected view is the latest entry of every path.
#[tokio::test]
async fn changes_from_far_behind_page_through_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    handshake(&mut c, "default").await;
    let (m, _) = upload(&mut c, b"x").await;
    let first = file_commit("default", "f0000", &m, 0, Content::Full(m.clone()));
    committed(commit(&mut c, first).await);
    let total = 4096 + 300u64;
    let mut seq = 0;
    for chunk in (1..total).collect::<Vec<_>>().chunks(4096) {
        let commits = chunk
            .iter()
            .map(|i| {
                // Paths 0..1000 again and again: later rounds are edits.
                let round = i / 1000;
                file_commit(
                    "default",
                    &format!("f{:04}", i % 1000),
                    &m,
                    round,
                    Content::Known(m.id()),
                )
            })
            .collect();
        let answer = c
            .commit_batch(pb::CommitBatchRequest {
                folder: "default".into(),
                device: "d".into(),
                commits,
            })
            .await
            .unwrap()
            .into_inner();
        for r in answer.results {
            match lbsync_proto::BatchOutcome::try_from(r).unwrap() {
                lbsync_proto::BatchOutcome::Committed { seq: s, .. } => seq = s,
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(seq, total);
    let mut stream = c
        .changes(pb::ChangesRequest {
            folder: "default".into(),
            cursor: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = std::collections::HashMap::new();
    let mut messages = 0;
    loop {
        let msg = stream.message().await.unwrap().expect("caught up first");
        messages += 1;
        assert!(msg.entries.len() <= 512);
        for e in msg.entries {
            let e = lbsync_proto::Entry::try_from(e).unwrap();
            assert!(e.seq > 2);
            assert!(
                seen.insert(e.path.to_string(), e.version).is_none(),
                "one entry per path"
            );
        }
        if msg.caught_up {
            assert_eq!(msg.cursor, total);
            break;
        }
        assert_eq!(
            msg.cursor, 2,
            "no cursor to resume after until the last page"
        );
    }
    assert!(messages >= 2, "{messages}");
    assert_eq!(seen.len(), 1000);
    assert_eq!(seen["f0000"], 5);
    assert_eq!(seen["f0999"], 4);
    server.stop().await;
}

/// The manifests a batch's commits read count against its budget too: a batch naming a stored
/// manifest over and over stops at the budget, the commit past it `invalid` and the rest not
/// tried (those before it took effect, as any batch's do).
#[tokio::test]
async fn a_batch_stops_where_its_reads_spend_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        limits: lbsync_server::Limits {
            max_batch_refs: 2000,
            ..Default::default()
        },
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    let mut c = server.client().await;
    handshake(&mut c, "default").await;
    let (m, _) = upload(&mut c, &seeded(256 << 10, 41)).await;
    let first = file_commit("default", "k0", &m, 0, Content::Full(m.clone()));
    committed(commit(&mut c, first).await);
    let n = m.chunks().len();
    let fit = 2000 / n;
    let answer = c
        .commit_batch(pb::CommitBatchRequest {
            folder: "default".into(),
            device: "d".into(),
            commits: (1..=fit + 5)
                .map(|i| file_commit("default", &format!("k{i}"), &m, 0, Content::Known(m.id())))
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<_> = answer
        .results
        .into_iter()
        .map(|r| lbsync_proto::BatchOutcome::try_from(r).unwrap())
        .collect();
    use lbsync_proto::BatchOutcome as O;
    assert!(
        outcomes[..fit]
            .iter()
            .all(|o| matches!(o, O::Committed { .. }))
    );
    assert!(
        matches!(&outcomes[fit], O::Invalid(why) if why.contains("budget of 2000")),
        "{:?}",
        outcomes[fit]
    );
    assert!(
        outcomes[fit + 1..]
            .iter()
            .all(|o| matches!(o, O::NotAttempted(_)))
    );
    assert_eq!(handshake(&mut c, "default").await.head, 1 + fit as u64);
    server.stop().await;
}

/// What the specification (sync.proto, docs/PROTOCOL.md) says a client must not send, beyond
/// the shape checks above: an empty chunk, a chunk whose length is not its declared raw_len, a
/// symlink target on an entry that is not a symlink. Each is refused with its reason and changes
/// nothing.
#[tokio::test]
async fn what_the_spec_forbids_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    handshake(&mut c, "default").await;
    let (m, _) = upload(&mut c, b"honest").await;
    committed(
        commit(
            &mut c,
            file_commit("default", "fine.txt", &m, 0, Content::Full(m.clone())),
        )
        .await,
    );
    let before = folder_state(&mut c, "default").await;

    let put = |chunk: pb::ChunkData| {
        tokio_stream::iter([pb::PutChunksRequest {
            chunks: vec![chunk],
            folder: "default".into(),
            ..Default::default()
        }])
    };
    let empty = Chunk::new(Bytes::new());
    let res = c
        .put_chunks(put(encode_chunk(empty.id(), empty.data())))
        .await;
    refused("an empty chunk", res, Code::InvalidArgument, "is empty");
    assert!(
        missing(&mut c, &[empty.id()]).await.contains(&empty.id()),
        "the empty chunk was not stored"
    );
    let abc = Chunk::new(&b"abc"[..]);
    let mut short = encode_chunk(abc.id(), abc.data());
    short.raw_len = 2;
    let res = c.put_chunks(put(short)).await;
    refused(
        "raw_len not the length",
        res,
        Code::InvalidArgument,
        "declared",
    );

    let mut file_with_target = file_commit("default", "f.txt", &m, 0, Content::Known(m.id()));
    file_with_target.entry.as_mut().unwrap().symlink_target = "/etc/passwd".into();
    let res = c.commit(file_with_target.clone()).await;
    refused(
        "a file with a symlink target",
        res,
        Code::InvalidArgument,
        "not a symlink",
    );
    let mut dir_with_target: pb::CommitRequest = lbsync_proto::CommitRequest {
        folder: "default".into(),
        entry: lbsync_proto::Entry::dir(lbsync_proto::SyncPath::new("d").unwrap(), "h"),
        base_version: 0,
        content: None,
    }
    .into();
    dir_with_target.entry.as_mut().unwrap().symlink_target = "..".into();
    let res = c.commit(dir_with_target).await;
    refused(
        "a directory with a symlink target",
        res,
        Code::InvalidArgument,
        "not a symlink",
    );
    let res = c
        .commit_batch(pb::CommitBatchRequest {
            folder: "default".into(),
            device: "hostile".into(),
            commits: vec![file_with_target],
        })
        .await
        .unwrap()
        .into_inner();
    match &res.results[0].result {
        Some(pb::commit_result::Result::Refused(r)) => {
            assert_eq!(r.reason, pb::Refusal::Invalid as i32);
            assert!(r.message.contains("not a symlink"), "{}", r.message);
        }
        other => panic!("a file with a symlink target in a batch: {other:?}"),
    }

    assert_eq!(
        folder_state(&mut c, "default").await,
        before,
        "nothing was committed"
    );
    server.stop().await;
}
