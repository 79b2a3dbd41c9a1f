//! Every RPC's happy path, the bad inputs, races, streams, shutdown, restart, auth and TLS.

use std::time::Duration;

use bytes::Bytes;
use lbsync_chunkstore::{Chunk, ChunkId, Manifest, ManifestDelta};
use lbsync_proto::convert::delta_from_pb;
use lbsync_proto::wire::encode_chunk;
use lbsync_proto::{CommitOutcome, CommitRequest, Content, Entry, EntryKind, SyncPath, pb};
use lbsync_server::{ServerConfig, Tokens};
use tonic::Code;

use crate::util::*;

fn deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(20)
}

#[tokio::test]
async fn upload_commit_download_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let hs = handshake(&mut c, "default").await;
    assert_eq!(hs.params.unwrap().avg_size, 8192);
    assert_eq!(hs.head, 0);

    let data = seeded(1 << 20, 1);
    let (m, sent) = upload(&mut c, &data).await;
    assert_eq!(sent, m.chunks().len());
    let (_, sent_again) = upload(&mut c, &data).await;
    assert_eq!(sent_again, 0, "present chunks are not sent twice");

    let e = committed(
        commit(
            &mut c,
            file_commit("default", "a/b.bin", &m, 0, Content::Full(m.clone())),
        )
        .await,
    );
    assert_eq!((e.version, e.seq, e.size), (1, 1, data.len() as u64));
    // The handshake names the commit at the head by its time: a client synced to it may skip
    // its Changes call.
    assert_eq!(hs.head_committed_ns, 0, "no commit at head 0");
    let again = handshake(&mut c, "default").await;
    assert_eq!(again.head, 1);
    assert!(e.committed_ns > 0);
    assert_eq!(again.head_committed_ns, e.committed_ns);

    let got = c
        .get_manifest(pb::GetManifestRequest {
            manifest_id: Bytes::copy_from_slice(m.id().as_bytes()),
            base_manifest_id: Bytes::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::get_manifest_response::Content::Manifest(enc)) = got.content else {
        panic!("expected a full manifest");
    };
    assert_eq!(Manifest::decode(&enc).unwrap(), m);
    assert_eq!(download(&mut c, &m).await, data);
}

#[tokio::test]
async fn get_manifests_answers_in_order_with_deltas_and_refuses_oversized_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let hs = handshake(&mut c, "default").await;
    let (a, _) = upload(&mut c, &seeded(100_000, 1)).await;
    let (b, _) = upload(&mut c, &seeded(100_000, 2)).await;
    for (path, m) in [("a", &a), ("b", &b)] {
        committed(
            commit(
                &mut c,
                file_commit("default", path, m, 0, Content::Full(m.clone())),
            )
            .await,
        );
    }
    let id = |m: &Manifest| Bytes::copy_from_slice(m.id().as_bytes());
    let never = Bytes::copy_from_slice(ChunkId::of(b"never").as_bytes());
    let r = c
        .get_manifests(pb::GetManifestsRequest {
            manifest_ids: vec![id(&b), never.clone(), id(&a)],
            base_manifest_ids: vec![id(&a), Bytes::new(), Bytes::new()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.manifests.len(), 3);
    let Some(pb::get_manifest_response::Content::Delta(d)) = &r.manifests[0].content else {
        panic!("b against a: a delta");
    };
    assert_eq!(delta_from_pb(d).unwrap().1.apply(&a).unwrap(), b);
    assert!(r.manifests[1].content.is_none(), "not on the server");
    let Some(pb::get_manifest_response::Content::Manifest(enc)) = &r.manifests[2].content else {
        panic!("a in full");
    };
    assert_eq!(Manifest::decode(enc).unwrap(), a);

    let too_many = hs.max_ids_per_request as usize + 1;
    let e = c
        .get_manifests(pb::GetManifestsRequest {
            manifest_ids: vec![id(&a); too_many],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("split the request"), "{e:?}");
    let e = c
        .get_manifests(pb::GetManifestsRequest {
            manifest_ids: vec![id(&a), id(&b)],
            base_manifest_ids: vec![id(&a)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = c
        .get_manifests(pb::GetManifestsRequest {
            manifest_ids: vec![Bytes::from_static(b"short")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}

#[tokio::test]
async fn small_edit_commits_as_small_delta_and_downloads_as_delta() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    handshake(&mut c, "default").await;
    let mut data = seeded(4 << 20, 2);
    let (base, _) = upload(&mut c, &data).await;
    let v1 = committed(
        commit(
            &mut c,
            file_commit("default", "big", &base, 0, Content::Full(base.clone())),
        )
        .await,
    );

    data.insert(2 << 20, b'!');
    let (edited, sent) = upload(&mut c, &data).await;
    assert!(
        sent <= 3,
        "a 1-byte insert changes one or two chunks, sent {sent}"
    );
    let delta = ManifestDelta::diff(&base, &edited);
    let req = file_commit(
        "default",
        "big",
        &edited,
        v1.version,
        Content::Delta {
            base: base.id(),
            delta,
        },
    );
    let req_len = prost::Message::encoded_len(&req);
    assert!(
        req_len < 600,
        "the commit of a small edit is small: {req_len} bytes"
    );
    let v2 = committed(commit(&mut c, req).await);
    assert_eq!(v2.version, 2);
    assert_eq!(v2.manifest, Some(edited.id()));

    let got = c
        .get_manifest(pb::GetManifestRequest {
            manifest_id: Bytes::copy_from_slice(edited.id().as_bytes()),
            base_manifest_id: Bytes::copy_from_slice(base.id().as_bytes()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::get_manifest_response::Content::Delta(d)) = got.content else {
        panic!("expected a delta");
    };
    let (b, delta) = delta_from_pb(&d).unwrap();
    assert_eq!(b, base.id());
    assert_eq!(delta.apply(&base).unwrap(), edited);

    // A rename: a create whose manifest the server already has, no chunk on the wire.
    let renamed = file_commit(
        "default",
        "big-renamed",
        &edited,
        0,
        Content::Known(edited.id()),
    );
    assert_eq!(
        committed(commit(&mut c, renamed).await).manifest,
        Some(edited.id())
    );
}

#[tokio::test]
async fn commit_with_missing_chunks_is_refused_with_their_ids() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    handshake(&mut c, "default").await;
    let chunks: Vec<_> = (0..3).map(|i| Chunk::new(seeded(5000, i))).collect();
    let m = Manifest::new(chunks.iter().map(Chunk::chunk_ref).collect());
    let err = c
        .commit(file_commit("default", "x", &m, 0, Content::Full(m.clone())))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("lacks 3 chunk"), "{}", err.message());
    let ids = err
        .metadata()
        .get_bin(lbsync_server::error::MISSING_IDS_KEY)
        .unwrap();
    let ids = lbsync_proto::ids_from_bytes(&ids.to_bytes().unwrap()).unwrap();
    assert_eq!(ids, chunks.iter().map(|c| c.id()).collect::<Vec<_>>());
    // Nothing was committed.
    let hs = handshake(&mut c, "default").await;
    assert_eq!(hs.head, 0);
}

#[tokio::test]
async fn conflicts_and_a_race_with_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    handshake(&mut c, "default").await;
    let (m, _) = upload(&mut c, b"first").await;
    committed(
        commit(
            &mut c,
            file_commit("default", "f", &m, 0, Content::Full(m.clone())),
        )
        .await,
    );
    // A second "new file" at the same path conflicts with v1.
    match commit(
        &mut c,
        file_commit("default", "f", &m, 0, Content::Known(m.id())),
    )
    .await
    {
        CommitOutcome::Conflict(cur) => assert_eq!(cur.version, 1),
        other => panic!("{other:?}"),
    }

    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let mut c = server.client().await;
        tasks.push(tokio::spawn(async move {
            let (m, _) = upload(&mut c, &[b'v', i]).await;
            commit(
                &mut c,
                file_commit("default", "f", &m, 1, Content::Full(m.clone())),
            )
            .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            CommitOutcome::Committed(e) => {
                assert_eq!(e.version, 2);
                wins += 1;
            }
            CommitOutcome::Conflict(cur) => assert_eq!(cur.version, 2),
        }
    }
    assert_eq!(wins, 1);
}

#[tokio::test]
async fn changes_replay_then_push_commits_from_other_connections() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut a = server.client().await;
    handshake(&mut a, "default").await;
    for (i, name) in ["one", "two", "one"].iter().enumerate() {
        let (m, _) = upload(&mut a, format!("content {i}").as_bytes()).await;
        let base = u64::from(i == 2);
        committed(
            commit(
                &mut a,
                file_commit("default", name, &m, base, Content::Full(m.clone())),
            )
            .await,
        );
    }
    let mut b = server.client().await;
    let mut stream = b
        .changes(pb::ChangesRequest {
            folder: "default".into(),
            cursor: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.caught_up);
    assert_eq!(first.cursor, 3);
    let paths: Vec<_> = first.entries.iter().map(|e| e.path.clone()).collect();
    assert_eq!(
        paths,
        [bytes("two"), bytes("one")],
        "compacted: latest entry per path, in seq order"
    );

    let dir_commit: pb::CommitRequest = CommitRequest {
        folder: "default".into(),
        entry: Entry::dir(SyncPath::new("empty-dir").unwrap(), "a"),
        base_version: 0,
        content: None,
    }
    .into();
    committed(commit(&mut a, dir_commit).await);
    let pushed = tokio::time::timeout_at(deadline(), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pushed.cursor, 4);
    let e = Entry::try_from(pushed.entries[0].clone()).unwrap();
    assert_eq!((e.path.as_str(), e.kind), ("empty-dir", EntryKind::Dir));

    // Deletion is a commit too, and is pushed.
    let del: pb::CommitRequest = CommitRequest {
        folder: "default".into(),
        entry: Entry::tombstone(SyncPath::new("two").unwrap(), EntryKind::File, "a"),
        base_version: 1,
        content: None,
    }
    .into();
    committed(commit(&mut a, del).await);
    let pushed = tokio::time::timeout_at(deadline(), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(pushed.entries[0].deleted);

    let err = b
        .changes(pb::ChangesRequest {
            folder: "default".into(),
            cursor: 99,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
}

#[tokio::test]
async fn an_upload_that_breaks_off_keeps_what_arrived_intact() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    handshake(&mut c, "default").await;
    let good: Vec<Chunk> = (0..20).map(|i| Chunk::new(seeded(4000, 100 + i))).collect();
    let mut bad = encode_chunk(good[0].id(), good[1].data());
    bad.raw_len = good[1].len() as u32;
    let msgs = vec![
        pb::PutChunksRequest {
            chunks: good
                .iter()
                .map(|c| encode_chunk(c.id(), c.data()))
                .collect(),
            ..Default::default()
        },
        pb::PutChunksRequest {
            chunks: vec![bad],
            ..Default::default()
        },
    ];
    let err = c.put_chunks(tokio_stream::iter(msgs)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let ids: Vec<ChunkId> = good.iter().map(|c| c.id()).collect();
    let missing = missing(&mut c, &ids).await;
    assert!(
        missing.is_empty(),
        "chunks before the break are kept, so a retry skips them"
    );
}

#[tokio::test]
async fn history_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    handshake(&mut c, "default").await;
    let mut manifests = Vec::new();
    for v in 0..3u64 {
        let (m, _) = upload(&mut c, format!("version {v}").as_bytes()).await;
        committed(
            commit(
                &mut c,
                file_commit("default", "doc.txt", &m, v, Content::Full(m.clone())),
            )
            .await,
        );
        manifests.push(m);
    }
    let h = c
        .history(pb::HistoryRequest {
            folder: "default".into(),
            path: bytes("doc.txt"),
            version: 0,
            raw_path: Default::default(),
        })
        .await
        .unwrap()
        .into_inner();
    let versions: Vec<u64> = h.versions.iter().map(|e| e.version).collect();
    assert_eq!(versions, [3, 2, 1]);
    let restored: CommitOutcome = c
        .restore(pb::RestoreRequest {
            folder: "default".into(),
            path: bytes("doc.txt"),
            version: 1,
            device: "me".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .try_into()
        .unwrap();
    let e = committed(restored);
    assert_eq!((e.version, e.manifest), (4, Some(manifests[0].id())));
    let err = c
        .restore(pb::RestoreRequest {
            folder: "default".into(),
            path: bytes("doc.txt"),
            version: 42,
            device: "me".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn graceful_shutdown_ends_streams_and_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    handshake(&mut c, "default").await;
    let data = seeded(300_000, 5);
    let (m, _) = upload(&mut c, &data).await;
    committed(
        commit(
            &mut c,
            file_commit("default", "keep.bin", &m, 0, Content::Full(m.clone())),
        )
        .await,
    );
    let mut stream = c
        .changes(pb::ChangesRequest {
            folder: "default".into(),
            cursor: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().unwrap().caught_up);
    server.stop().await;
    let ended = tokio::time::timeout_at(deadline(), stream.message())
        .await
        .unwrap();
    assert!(
        !matches!(ended, Ok(Some(_))),
        "the stream ends on shutdown: {ended:?}"
    );

    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    assert_eq!(handshake(&mut c, "default").await.head, 1);
    assert_eq!(download(&mut c, &m).await, data);
    let h = c
        .history(pb::HistoryRequest {
            folder: "default".into(),
            path: bytes("keep.bin"),
            version: 0,
            raw_path: Default::default(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.versions.len(), 1);
}

#[tokio::test]
async fn tokens_are_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        tokens: Tokens::parse("s3cret\n"),
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut anonymous = pb::sync_client::SyncClient::new(channel.clone());
    let err = anonymous
        .handshake(pb::HandshakeRequest {
            protocol_version: lbsync_proto::PROTOCOL_VERSION,
            folder: "default".into(),
            device: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    for (token, ok) in [("wrong", false), ("s3cret", true)] {
        let header: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        let mut c = pb::sync_client::SyncClient::with_interceptor(
            channel.clone(),
            move |mut r: tonic::Request<()>| {
                r.metadata_mut().insert("authorization", header.clone());
                Ok(r)
            },
        );
        let res = c
            .handshake(pb::HandshakeRequest {
                protocol_version: lbsync_proto::PROTOCOL_VERSION,
                folder: "default".into(),
                device: "x".into(),
            })
            .await;
        assert_eq!(res.is_ok(), ok, "{token}: {res:?}");
    }
}

#[tokio::test]
async fn tls_serves_clients_that_trust_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_pem = cert.cert.pem();
    let config = ServerConfig {
        tls: Some((
            cert_pem.clone().into_bytes(),
            cert.signing_key.serialize_pem().into_bytes(),
        )),
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(cert_pem))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = with_token(channel, None);
    assert_eq!(
        handshake(&mut c, "default").await.protocol_version,
        lbsync_proto::PROTOCOL_VERSION
    );
    // Plain text is refused.
    let plain = pb::sync_client::SyncClient::connect(format!("http://{}", server.addr)).await;
    if let Ok(mut plain) = plain {
        assert!(
            plain
                .handshake(pb::HandshakeRequest {
                    protocol_version: lbsync_proto::PROTOCOL_VERSION,
                    folder: "default".into(),
                    device: "x".into()
                })
                .await
                .is_err()
        );
    }
}

#[tokio::test]
async fn a_very_large_files_larger_chunks_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    handshake(&mut c, "default").await;
    // What a client chunks a file of many GB with: up to 1 MiB per chunk.
    let params = lbsync_chunkstore::ChunkParams::DEFAULT.for_file(u64::MAX);
    let data = seeded(6 << 20, 21);
    let (m, sent) = upload_with(&mut c, &data, params).await;
    assert!(
        m.chunks().iter().any(|r| r.len > 64 << 10),
        "larger chunks than the store's"
    );
    assert_eq!(sent, m.chunks().len());
    // A file of many GB made of those chunks (the ones within the large class's minimum, over
    // and over: 4 GiB of data is not needed to name it) commits.
    let large: Vec<_> = m
        .chunks()
        .iter()
        .copied()
        .filter(|r| r.len >= params.min_size)
        .collect();
    let per_round: u64 = large.iter().map(|r| u64::from(r.len)).sum();
    let rounds = lbsync_chunkstore::ChunkParams::LARGE_FILE / per_round + 1;
    let huge = Manifest::new(
        std::iter::repeat_n(large, rounds as usize)
            .flatten()
            .collect(),
    );
    assert!(huge.size() >= lbsync_chunkstore::ChunkParams::LARGE_FILE);
    committed(
        commit(
            &mut c,
            file_commit("default", "huge.img", &huge, 0, Content::Full(huge.clone())),
        )
        .await,
    );
    // The same chunks as a 6 MiB file's do not fit its size class: a client chunks a file that
    // small with the store's parameters.
    let res = c
        .commit(file_commit(
            "default",
            "small.img",
            &m,
            0,
            Content::Full(m.clone()),
        ))
        .await;
    let err = res.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("outside 2048..=65536"),
        "{}",
        err.message()
    );
    assert_eq!(download(&mut c, &m).await, data);
}

#[tokio::test]
async fn the_handshake_names_the_store_and_a_new_store_has_a_new_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let first = handshake(&mut server.client().await, "default")
        .await
        .store_id;
    assert_eq!(first.len(), 32, "{first:?}");
    server.stop().await;

    let server = TestServer::start(dir.path()).await;
    let again = handshake(&mut server.client().await, "default")
        .await
        .store_id;
    assert_eq!(again, first, "a restart keeps the id");
    server.stop().await;

    // The store lost and made anew at the same place: another id.
    std::fs::remove_dir_all(dir.path()).unwrap();
    let server = TestServer::start(dir.path()).await;
    let fresh = handshake(&mut server.client().await, "default")
        .await
        .store_id;
    assert_ne!(fresh, first);
    server.stop().await;
}

/// A chunk whose bytes on disk went bad is refused on download, then reported missing, so the
/// next upload of it (from any client that still has it) heals the store.
#[tokio::test]
async fn a_damaged_chunk_is_missing_after_a_failed_read_and_heals_on_upload() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    handshake(&mut c, "default").await;
    let data = seeded(5000, 42); // one chunk of random bytes: stored raw
    let (m, sent) = upload(&mut c, &data).await;
    assert_eq!(sent, 1);
    let id = m.chunks()[0].id;

    // Flip a byte of it where it lies in its pack.
    let packs = dir.path().join("packs");
    let mut flipped = false;
    for e in std::fs::read_dir(&packs).unwrap() {
        let p = e.unwrap().path();
        let mut bytes = std::fs::read(&p).unwrap();
        if let Some(at) = bytes.windows(64).position(|w| w == &data[..64]) {
            bytes[at + 100] ^= 0x40;
            std::fs::write(&p, &bytes).unwrap();
            flipped = true;
        }
    }
    assert!(flipped, "the chunk is in a pack");
    assert!(missing(&mut c, &[id]).await.is_empty());

    let mut stream = c
        .get_chunks(pb::GetChunksRequest {
            ids: lbsync_proto::ids_to_bytes(&[id]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let err = match stream.message().await {
        Ok(Some(_)) => panic!("damaged bytes were sent"),
        Ok(None) => panic!("the stream ended without an error"),
        Err(s) => s,
    };
    assert!(err.message().contains("corrupt"), "{err:?}");
    assert_eq!(missing(&mut c, &[id]).await, [id], "reported missing");

    let (_, sent) = upload(&mut c, &data).await;
    assert_eq!(sent, 1, "uploaded again");
    assert_eq!(download(&mut c, &m).await, data);
    server.stop().await;
}

/// A download that asks `together` gets a message's whole chunks in one zstd frame, in request
/// order and without ids (each is the id asked at its place); chunks that do not compress
/// together go one by one as before; an old-style request gets no frame.
#[tokio::test]
async fn get_chunks_asked_together_answers_a_frame_in_request_order() {
    use lbsync_proto::wire::{pack_together, raw_chunk, unpack_answer_together};
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    handshake(&mut c, "default").await;
    let text: Vec<Chunk> = (0..60)
        .map(|i| Chunk::new(format!("import os\n\ndef g{i}():\n    return {i}\n").repeat(15)))
        .collect();
    let random: Vec<Chunk> = (0..3).map(|i| Chunk::new(seeded(5000, i))).collect();
    let mut put = pb::PutChunksRequest {
        chunks: text
            .iter()
            .chain(&random)
            .map(|c| raw_chunk(c.id(), c.data()))
            .collect(),
        ..Default::default()
    };
    pack_together(&mut put).unwrap();
    c.put_chunks(tokio_stream::iter([put])).await.unwrap();

    let get = |ids: Vec<ChunkId>, together: bool| {
        let mut c = c.clone();
        async move {
            let mut s = c
                .get_chunks(pb::GetChunksRequest {
                    ids: lbsync_proto::ids_to_bytes(&ids),
                    together,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let mut msgs = Vec::new();
            while let Some(m) = s.message().await.unwrap() {
                msgs.push(m);
            }
            msgs
        }
    };
    // Text, reversed: the frame follows the request's order, not the store's.
    let asked: Vec<ChunkId> = text.iter().rev().map(Chunk::id).collect();
    let msgs = get(asked.clone(), true).await;
    let wire: usize = msgs.iter().map(prost::Message::encoded_len).sum();
    let raw: usize = text.iter().map(Chunk::len).sum();
    assert!(wire * 10 < raw, "{wire} bytes on the wire for {raw}");
    let mut got = Vec::new();
    for mut m in msgs {
        assert!(!m.together.is_empty());
        unpack_answer_together(&mut m, 64 << 20).unwrap();
        got.extend(m.chunks);
    }
    assert_eq!(got.len(), asked.len());
    for (cd, id) in got.iter().zip(&asked) {
        assert!(cd.id.is_empty(), "the id is the one asked at its place");
        assert_eq!(ChunkId::of(&cd.data), *id);
    }
    // Random chunks do not pay together: each goes on its own, with its id.
    let asked: Vec<ChunkId> = random.iter().map(Chunk::id).collect();
    for m in get(asked.clone(), true).await {
        assert!(m.together.is_empty());
        for (cd, id) in m.chunks.iter().zip(&asked) {
            assert_eq!(cd.id[..], id.as_bytes()[..]);
        }
    }
    // Not asked: no frame, each chunk compressed alone as before.
    for m in get(text.iter().map(Chunk::id).collect(), false).await {
        assert!(m.together.is_empty());
        assert!(
            m.chunks
                .iter()
                .all(|cd| cd.compression == pb::Compression::Zstd as i32 && cd.id.len() == 32)
        );
    }
    server.stop().await;
}

/// Small files' chunks in one zstd frame (`PutChunksRequest.together`) are stored each on its
/// own, compressed alone, and come back whole; a frame that lies about its length, or a chunk
/// whose bytes in it are not its own, stores nothing of the message.
#[tokio::test]
async fn chunks_sent_together_are_stored_one_by_one_and_a_lying_frame_stores_nothing() {
    use lbsync_proto::wire::{pack_together, raw_chunk};
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    assert!(handshake(&mut c, "default").await.chunks_together);
    let files: Vec<Chunk> = (0..40)
        .map(|i| Chunk::new(format!("import os\n\ndef f{i}():\n    return {i}\n").repeat(20)))
        .collect();
    let ids: Vec<ChunkId> = files.iter().map(Chunk::id).collect();
    let message = |chunks: &[Chunk]| {
        let mut m = pb::PutChunksRequest {
            chunks: chunks.iter().map(|c| raw_chunk(c.id(), c.data())).collect(),
            ..Default::default()
        };
        pack_together(&mut m).unwrap();
        assert!(!m.together.is_empty());
        m
    };

    // Lies: a length off by one, and two chunks' places swapped.
    let mut short = message(&files[..20]);
    short.chunks[5].raw_len -= 1;
    let mut swapped = message(&files[..20]);
    // Ids may be left out (the server hashes the bytes); named, they are checked.
    for (c, f) in swapped.chunks.iter_mut().zip(&files) {
        c.id = Bytes::copy_from_slice(f.id().as_bytes());
    }
    swapped.chunks.swap(2, 3);
    for (what, m, says) in [
        ("a length off by one", short, "together frame"),
        ("swapped chunks", swapped, &files[3].id().to_string()[..]),
    ] {
        let err = c.put_chunks(tokio_stream::iter([m])).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(says), "{what}: {}", err.message());
    }
    assert_eq!(missing(&mut c, &ids).await.len(), 40, "nothing was stored");

    let sent = message(&files);
    let wire = prost::Message::encoded_len(&sent);
    let raw: usize = files.iter().map(Chunk::len).sum();
    assert!(wire * 10 < raw, "{wire} bytes on the wire for {raw}");
    let resp = c
        .put_chunks(tokio_stream::iter([sent]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.stored, 40);
    assert!(missing(&mut c, &ids).await.is_empty());
    let m = Manifest::new(files.iter().map(|c| c.chunk_ref()).collect());
    let whole: Vec<u8> = files.iter().flat_map(|c| c.data().to_vec()).collect();
    assert_eq!(download(&mut c, &m).await, whole);
    server.stop().await;
    // Each is stored compressed on its own.
    let store = lbsync_chunkstore::PackStore::open(dir.path()).unwrap();
    let stats = lbsync_chunkstore::ChunkStore::stats(&store).unwrap();
    assert!(stats.stored_bytes * 4 < stats.raw_bytes, "{stats:?}");
}

#[tokio::test]
async fn block_deltas_rebuild_on_the_stored_base_and_bad_ones_store_nothing() {
    use lbsync_chunkstore::Signature;
    use lbsync_proto::wire::{encode_block_delta, signature_from_pb};
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    assert!(handshake(&mut c, "default").await.block_deltas);
    let old = Chunk::new(seeded(8192, 3));
    c.put_chunks(tokio_stream::iter([pb::PutChunksRequest {
        chunks: vec![encode_chunk(old.id(), old.data())],
        ..Default::default()
    }]))
    .await
    .unwrap();
    let never = Chunk::new(seeded(5000, 4));
    let sigs = c
        .get_signatures(pb::GetSignaturesRequest {
            ids: lbsync_proto::ids_to_bytes(&[old.id(), never.id()]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .signatures;
    assert_eq!(sigs.len(), 2);
    let sig = signature_from_pb(&sigs[0]).unwrap().unwrap();
    assert_eq!(sig, Signature::of(old.data()));
    assert_eq!(
        signature_from_pb(&sigs[1]).unwrap(),
        None,
        "not held: empty"
    );

    let mut edited = old.data().to_vec();
    edited.insert(4000, b'!');
    let new = Chunk::new(edited);
    let good = encode_block_delta(
        new.id(),
        new.data(),
        &[old.id()],
        std::slice::from_ref(&sig),
        new.len(),
    )
    .unwrap();
    assert!(good.data.len() < 400, "{}", good.data.len());

    // Bad ones: each refused, nothing stored.
    let mut wrong_hash = good.clone();
    wrong_hash.id = Bytes::copy_from_slice(never.id().as_bytes());
    let mut out_of_range = good.clone();
    // Block size 256, then a copy of block 40 (the base has 32).
    let ops = [0x80, 0x02, 0b11, 40];
    out_of_range.data = Bytes::from(lbsync_chunkstore::compress_frame(&ops).unwrap());
    out_of_range.raw_len = 256;
    let mut not_held = good.clone();
    not_held.base_ids = Bytes::copy_from_slice(never.id().as_bytes());
    let mut oversized = good.clone();
    oversized.raw_len = 2 << 20;
    let mut short = good.clone();
    short.raw_len -= 1;
    for (what, chunk, code, says) in [
        (
            "wrong hash",
            wrong_hash,
            Code::InvalidArgument,
            "do not match their id",
        ),
        (
            "out of range",
            out_of_range,
            Code::InvalidArgument,
            "where the bases have 32",
        ),
        (
            "base not held",
            not_held,
            Code::NotFound,
            "send the chunk whole",
        ),
        ("oversized", oversized, Code::InvalidArgument, "not 1..="),
        (
            "short",
            short,
            Code::InvalidArgument,
            "more than the declared",
        ),
    ] {
        let err = c
            .put_chunks(tokio_stream::iter([pb::PutChunksRequest {
                chunks: vec![chunk],
                ..Default::default()
            }]))
            .await
            .expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(err.message().contains(says), "{what}: {}", err.message());
        assert_eq!(
            missing(&mut c, &[new.id(), never.id()]).await.len(),
            2,
            "{what}: nothing stored"
        );
    }

    // Too many ids.
    let err = c
        .get_signatures(pb::GetSignaturesRequest {
            ids: lbsync_proto::ids_to_bytes(&vec![old.id(); 65_537]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    c.put_chunks(tokio_stream::iter([pb::PutChunksRequest {
        chunks: vec![good],
        ..Default::default()
    }]))
    .await
    .unwrap();
    assert!(missing(&mut c, &[new.id()]).await.is_empty());
    let m = Manifest::new(vec![new.chunk_ref()]);
    assert_eq!(download(&mut c, &m).await, new.data().to_vec());
    server.stop().await;
}
