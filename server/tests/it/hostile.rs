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
        })
        .await;
    refused("future cursor", res.map(|_| ()), Code::OutOfRange, "cursor");
    let res = c
        .changes(pb::ChangesRequest {
            folder: "nope".into(),
            cursor: 0,
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
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let paths: Vec<_> = first.entries.iter().map(|e| e.path.clone()).collect();
    assert_eq!(paths, [bytes("fine.txt")]);
    server.stop().await;
}
