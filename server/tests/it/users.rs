//! Users, tokens and shared folders: every RPC (folder keys included) tried with every token on
//! every folder, what is denied changes nothing, MissingChunks tells nothing of another folder's
//! content, and a revoked token ends a Changes stream.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use lbsync_chunkstore::{Chunk, ChunkId, ChunkParams, ChunkStore, Chunker, Manifest, PackStore};
use lbsync_proto::wire::{encode_chunk, encode_chunk_against};
use lbsync_proto::{
    CommitRequest, Content, Entry, PROTOCOL_VERSION, SyncPath, ids_from_bytes, ids_to_bytes, pb,
};
use lbsync_server::folders::SledFolders;
use lbsync_server::meta::{FolderMeta, UserMeta};
use lbsync_server::users::SledUsers;
use lbsync_server::{ServerConfig, Tokens};
use tonic::{Code, Status};

use crate::util::{Client, TestServer, bytes, seeded};

const FOLDERS: [&str; 4] = ["alice-private", "bob-private", "shared-rw", "shared-ro"];
const ADMIN: &str = "admin-secret";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rpc {
    Handshake,
    MissingChunks,
    PutChunks,
    Commit,
    CommitBatch,
    Changes,
    GetManifest,
    GetManifests,
    GetChunks,
    GetSignatures,
    History,
    Restore,
    GetFolderKeys,
    SetFolderKeys,
}

const RPCS: [Rpc; 14] = [
    Rpc::Handshake,
    Rpc::MissingChunks,
    Rpc::PutChunks,
    Rpc::Commit,
    Rpc::CommitBatch,
    Rpc::Changes,
    Rpc::GetManifest,
    Rpc::GetManifests,
    Rpc::GetChunks,
    Rpc::GetSignatures,
    Rpc::History,
    Rpc::Restore,
    Rpc::GetFolderKeys,
    Rpc::SetFolderKeys,
];

impl Rpc {
    fn writes(self) -> bool {
        matches!(
            self,
            Rpc::PutChunks | Rpc::Commit | Rpc::CommitBatch | Rpc::Restore | Rpc::SetFolderKeys
        )
    }
}

/// A store with users alice and bob, a private folder each, alice's `shared-rw` shared with bob
/// read-write and `shared-ro` read-only, each holding `seed.txt`, served with an admin token file.
struct World {
    _dir: tempfile::TempDir,
    store: PackStore,
    server: TestServer,
    /// Token name → (id, token); "admin" has no id.
    tokens: BTreeMap<&'static str, (String, String)>,
    /// Folder → the manifest of its `seed.txt`.
    seeds: BTreeMap<&'static str, Manifest>,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    let users = SledUsers::open(store.db()).unwrap();
    users.add_user("alice").unwrap();
    users.add_user("bob").unwrap();
    let mut tokens = BTreeMap::new();
    for (name, user, ro, folder) in [
        ("alice", "alice", false, None),
        ("bob", "bob", false, None),
        ("bob-ro", "bob", true, None),
        ("bob-one", "bob", false, Some("shared-rw")),
    ] {
        let (info, token) = users.create_token(user, ro, folder).unwrap();
        tokens.insert(name, (info.id, token));
    }
    tokens.insert("admin", (String::new(), ADMIN.to_owned()));
    let config = ServerConfig {
        tokens: Tokens::parse(&format!("{ADMIN}\n")),
        ..ServerConfig::default()
    };
    let server = TestServer::start_store(store.clone(), config).await;
    let mut seeds = BTreeMap::new();
    // Each folder is made by its owner's first handshake.
    for (folder, owner) in [
        ("alice-private", "alice"),
        ("bob-private", "bob"),
        ("shared-rw", "alice"),
        ("shared-ro", "alice"),
    ] {
        let mut c = server.client_with_token(Some(&tokens[owner].1)).await;
        hs(&mut c, folder).await.unwrap();
        let data = format!("the seed of {folder}, by {owner}").repeat(100);
        let m = upload_to(&mut c, folder, data.as_bytes()).await;
        commit_file(&mut c, folder, "seed.txt", &m, Content::Full(m.clone()))
            .await
            .unwrap();
        seeds.insert(folder, m);
    }
    users.share("shared-rw", "bob", false).unwrap();
    users.share("shared-ro", "bob", true).unwrap();
    assert_eq!(users.owner("shared-ro").unwrap().as_deref(), Some("alice"));
    World {
        _dir: dir,
        store,
        server,
        tokens,
        seeds,
    }
}

async fn hs(c: &mut Client, folder: &str) -> Result<pb::HandshakeResponse, Status> {
    c.handshake(pb::HandshakeRequest {
        protocol_version: PROTOCOL_VERSION,
        folder: folder.into(),
        device: "test".into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

fn chunks_of(data: &[u8]) -> Vec<Chunk> {
    Chunker::new(data, ChunkParams::DEFAULT)
        .map(|r| r.unwrap().1)
        .collect()
}

async fn missing_in(c: &mut Client, folder: &str, ids: &[ChunkId]) -> Result<Vec<ChunkId>, Status> {
    let r = c
        .missing_chunks(pb::MissingChunksRequest {
            ids: ids_to_bytes(ids),
            folder: folder.into(),
        })
        .await?
        .into_inner();
    Ok(ids_from_bytes(&r.missing).unwrap())
}

async fn put_in(
    c: &mut Client,
    folder: &str,
    chunks: Vec<pb::ChunkData>,
) -> Result<pb::PutChunksResponse, Status> {
    let first = pb::PutChunksRequest {
        chunks,
        folder: folder.into(),
        ..Default::default()
    };
    c.put_chunks(tokio_stream::iter([first]))
        .await
        .map(tonic::Response::into_inner)
}

/// Uploads what `folder` lacks of `data` and returns its manifest.
async fn upload_to(c: &mut Client, folder: &str, data: &[u8]) -> Manifest {
    let chunks = chunks_of(data);
    let ids: Vec<_> = chunks.iter().map(Chunk::id).collect();
    let missing = missing_in(c, folder, &ids).await.unwrap();
    let send = chunks
        .iter()
        .filter(|c| missing.contains(&c.id()))
        .map(|c| encode_chunk(c.id(), c.data()))
        .collect();
    put_in(c, folder, send).await.unwrap();
    Manifest::new(chunks.iter().map(Chunk::chunk_ref).collect())
}

async fn commit_file(
    c: &mut Client,
    folder: &str,
    path: &str,
    m: &Manifest,
    content: Content,
) -> Result<pb::CommitResponse, Status> {
    let req = CommitRequest {
        folder: folder.into(),
        entry: Entry::file(SyncPath::new(path).unwrap(), m, "test"),
        base_version: 0,
        content: Some(content),
    };
    c.commit(pb::CommitRequest::from(req))
        .await
        .map(tonic::Response::into_inner)
}

async fn get_chunks_in(
    c: &mut Client,
    folder: &str,
    ids: &[ChunkId],
) -> Result<Vec<Bytes>, Status> {
    let mut s = c
        .get_chunks(pb::GetChunksRequest {
            ids: ids_to_bytes(ids),
            folder: folder.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = s.message().await? {
        for cd in msg.chunks {
            out.push(
                lbsync_proto::wire::decode_chunk(cd, 1 << 20)
                    .unwrap()
                    .into_data(),
            );
        }
    }
    Ok(out)
}

fn dir_commit(folder: &str, tag: &str) -> CommitRequest {
    CommitRequest {
        folder: folder.into(),
        entry: Entry::dir(SyncPath::new(format!("d/{tag}")).unwrap(), "test"),
        base_version: 0,
        content: None,
    }
}

/// Tries `rpc` on `folder`; `tag` makes its writes unique.
async fn attempt(
    c: &mut Client,
    folder: &str,
    rpc: Rpc,
    seed: &Manifest,
    tag: &str,
) -> Result<(), Status> {
    let seed_ids: Vec<_> = seed.chunks().iter().map(|r| r.id).collect();
    match rpc {
        Rpc::Handshake => hs(c, folder).await.map(drop),
        Rpc::MissingChunks => {
            let missing = missing_in(c, folder, &seed_ids).await?;
            assert!(missing.is_empty(), "the seed is in {folder}");
            Ok(())
        }
        Rpc::PutChunks => {
            let chunk = Chunk::new(format!("a chunk from {tag}").into_bytes());
            let r = put_in(c, folder, vec![encode_chunk(chunk.id(), chunk.data())]).await?;
            assert_eq!(r.stored, 1);
            Ok(())
        }
        Rpc::Commit => {
            let r = c
                .commit(pb::CommitRequest::from(dir_commit(folder, tag)))
                .await?
                .into_inner();
            assert!(matches!(
                r.result,
                Some(pb::commit_response::Result::Committed(_))
            ));
            Ok(())
        }
        Rpc::CommitBatch => {
            let r = c
                .commit_batch(pb::CommitBatchRequest {
                    folder: folder.into(),
                    device: "test".into(),
                    commits: vec![dir_commit(folder, tag).into()],
                })
                .await?
                .into_inner();
            assert!(matches!(
                r.results[0].result,
                Some(pb::commit_result::Result::Committed(_))
            ));
            Ok(())
        }
        Rpc::Changes => {
            let mut s = c
                .changes(pb::ChangesRequest {
                    folder: folder.into(),
                    cursor: 0,
                    ..Default::default()
                })
                .await?
                .into_inner();
            s.message().await?.expect("a first message");
            Ok(())
        }
        Rpc::GetManifest => {
            let r = c
                .get_manifest(pb::GetManifestRequest {
                    manifest_id: Bytes::copy_from_slice(seed.id().as_bytes()),
                    folder: folder.into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            assert!(r.content.is_some());
            Ok(())
        }
        Rpc::GetManifests => {
            let r = c
                .get_manifests(pb::GetManifestsRequest {
                    manifest_ids: vec![Bytes::copy_from_slice(seed.id().as_bytes())],
                    folder: folder.into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            assert!(r.manifests[0].content.is_some());
            Ok(())
        }
        Rpc::GetChunks => {
            let got = get_chunks_in(c, folder, &seed_ids).await?;
            assert_eq!(got.len(), seed_ids.len());
            Ok(())
        }
        Rpc::GetSignatures => {
            let ids: Vec<u8> = seed_ids.iter().flat_map(|id| *id.as_bytes()).collect();
            let r = c
                .get_signatures(pb::GetSignaturesRequest {
                    ids: ids.into(),
                    folder: folder.into(),
                })
                .await?
                .into_inner();
            assert_eq!(r.signatures.len(), seed_ids.len());
            assert!(r.signatures.iter().all(|s| s.len > 0), "{tag}: held");
            Ok(())
        }
        Rpc::History => {
            let r = c
                .history(pb::HistoryRequest {
                    folder: folder.into(),
                    path: bytes("seed.txt"),
                    version: 0,
                    raw_path: Default::default(),
                })
                .await?
                .into_inner();
            assert!(!r.versions.is_empty());
            Ok(())
        }
        Rpc::Restore => {
            let r = c
                .restore(pb::RestoreRequest {
                    folder: folder.into(),
                    path: bytes("seed.txt"),
                    version: 1,
                    device: "test".into(),
                })
                .await?
                .into_inner();
            assert!(matches!(
                r.result,
                Some(pb::commit_response::Result::Committed(_))
            ));
            Ok(())
        }
        Rpc::GetFolderKeys => {
            let keys = c
                .get_folder_keys(pb::GetFolderKeysRequest {
                    folder: folder.into(),
                })
                .await?
                .into_inner();
            assert_eq!(keys.generation, 0, "{folder} is plain");
            Ok(())
        }
        Rpc::SetFolderKeys => {
            // Authorized, it is refused for the folder's entries in the clear: nothing changes.
            let res = c
                .set_folder_keys(pb::SetFolderKeysRequest {
                    folder: folder.into(),
                    expected_generation: 0,
                    wrapped: vec![pb::WrappedKey {
                        kind: "passphrase".into(),
                        label: String::new(),
                        age: bytes(tag),
                    }],
                })
                .await;
            match res {
                Err(s) if s.code() == Code::FailedPrecondition => {
                    assert!(s.message().contains("in the clear"), "{s:?}");
                    Ok(())
                }
                Err(s) => Err(s),
                Ok(r) => panic!("{folder} with entries was made encrypted: {r:?}"),
            }
        }
    }
}

/// What `token` gets for `rpc` on `folder`: `None` when allowed.
fn expected(token: &str, folder: &str, rpc: Rpc) -> Option<Code> {
    let denied = Some(Code::PermissionDenied);
    match token {
        "none" | "bogus" => Some(Code::Unauthenticated),
        "admin" => None,
        "alice" => (folder == "bob-private").then_some(Code::PermissionDenied),
        "bob" => match folder {
            "alice-private" => denied,
            "shared-ro" if rpc.writes() => denied,
            _ => None,
        },
        "bob-ro" => match folder {
            "alice-private" => denied,
            _ if rpc.writes() => denied,
            _ => None,
        },
        "bob-one" => (folder != "shared-rw").then_some(Code::PermissionDenied),
        other => panic!("no token {other}"),
    }
}

/// Everything a request could change: trees, folders' heads and entries, scopes, owners and
/// members, the store's chunks.
fn snapshot(store: &PackStore) -> String {
    let db = store.db();
    let mut names: Vec<String> = db
        .tree_names()
        .iter()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    names.sort();
    let mut out = format!("trees {names:?}\n");
    let folders = SledFolders::open(db).unwrap();
    for f in folders.names().unwrap() {
        let mut entries = folders.current_entries(&f).unwrap();
        entries.sort_by(|a, b| a.path.as_str().cmp(b.path.as_str()));
        out += &format!("{f} head {} {entries:?}\n", folders.head(&f).unwrap());
    }
    for n in names.iter().filter(|n| {
        n.starts_with("scope/") || *n == "owners" || *n == "members" || *n == "folder_keys"
    }) {
        let t = db.open_tree(n).unwrap();
        let keys: Vec<_> = t.iter().keys().map(|k| k.unwrap().to_vec()).collect();
        out += &format!("{n} {keys:?}\n");
    }
    let s = store.stats().unwrap();
    out += &format!("chunks {} bytes {}\n", s.chunks, s.raw_bytes);
    out
}

#[tokio::test]
async fn every_rpc_with_every_token_on_every_folder() {
    let w = world().await;
    let mut clients = BTreeMap::new();
    clients.insert("none", w.server.client().await);
    clients.insert(
        "bogus",
        w.server
            .client_with_token(Some(
                "lbs_00000000_0000000000000000000000000000000000000000000000000000000000000000",
            ))
            .await,
    );
    for (name, (_, token)) in &w.tokens {
        clients.insert(name, w.server.client_with_token(Some(token)).await);
    }
    let mut before = snapshot(&w.store);
    let (mut allowed, mut denied) = (0, 0);
    for (token, c) in clients.iter_mut() {
        for folder in FOLDERS {
            for rpc in RPCS {
                let tag = format!("{token}-{folder}-{rpc:?}");
                let res = attempt(c, folder, rpc, &w.seeds[folder], &tag).await;
                match (expected(token, folder, rpc), res) {
                    (None, Ok(())) => {
                        allowed += 1;
                        before = snapshot(&w.store);
                    }
                    (Some(code), Err(s)) => {
                        denied += 1;
                        assert_eq!(s.code(), code, "{tag}: {s:?}");
                        assert!(
                            s.message().contains(": ") && s.message().len() > 40,
                            "{tag}: the message says what to do: {s:?}"
                        );
                        assert_eq!(
                            snapshot(&w.store),
                            before,
                            "{tag} was denied but changed something"
                        );
                    }
                    (want, got) => panic!("{tag}: expected {want:?}, got {got:?}"),
                }
            }
        }
    }
    assert_eq!(allowed + denied, 7 * 4 * RPCS.len());
    assert!(
        allowed > 60 && denied > 100,
        "{allowed} allowed, {denied} denied"
    );
}

#[tokio::test]
async fn a_new_folder_belongs_to_its_creator_and_a_read_only_token_creates_none() {
    let w = world().await;
    let before = snapshot(&w.store);
    let mut ro = w
        .server
        .client_with_token(Some(&w.tokens["bob-ro"].1))
        .await;
    let err = hs(&mut ro, "bobs-new").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let mut one = w
        .server
        .client_with_token(Some(&w.tokens["bob-one"].1))
        .await;
    let err = hs(&mut one, "bobs-new").await.unwrap_err();
    assert!(
        err.message().contains("limited to folder shared-rw"),
        "{err:?}"
    );
    assert_eq!(
        snapshot(&w.store),
        before,
        "a denied handshake created something"
    );

    let mut bob = w.server.client_with_token(Some(&w.tokens["bob"].1)).await;
    hs(&mut bob, "bobs-new").await.unwrap();
    let users = SledUsers::open(w.store.db()).unwrap();
    assert_eq!(users.owner("bobs-new").unwrap().as_deref(), Some("bob"));
    let mut alice = w.server.client_with_token(Some(&w.tokens["alice"].1)).await;
    let err = hs(&mut alice, "bobs-new").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("share bobs-new --with alice"),
        "{err:?}"
    );
    // A folder the admin made belongs to no user until shared.
    let mut admin = w.server.client_with_token(Some(ADMIN)).await;
    hs(&mut admin, "admins").await.unwrap();
    assert_eq!(users.owner("admins").unwrap(), None);
    assert_eq!(
        hs(&mut bob, "admins").await.unwrap_err().code(),
        Code::PermissionDenied
    );
    users.share("admins", "bob", true).unwrap();
    hs(&mut bob, "admins").await.unwrap();
}

#[tokio::test]
async fn missing_chunks_tells_nothing_of_another_folders_content() {
    let w = world().await;
    let mut alice = w.server.client_with_token(Some(&w.tokens["alice"].1)).await;
    let mut bob = w.server.client_with_token(Some(&w.tokens["bob"].1)).await;
    let secret = seeded(300_000, 7);
    let m = upload_to(&mut alice, "alice-private", &secret).await;
    commit_file(
        &mut alice,
        "alice-private",
        "secret.bin",
        &m,
        Content::Full(m.clone()),
    )
    .await
    .unwrap();
    let chunks = chunks_of(&secret);
    let ids: Vec<_> = chunks.iter().map(Chunk::id).collect();
    assert!(ids.len() > 10);
    let never: Vec<_> = (0..3u8).map(|i| ChunkId::of(&[i; 9])).collect();

    // Bob, in his folder (and in the one alice shares with him): alice's chunks are as absent as
    // chunks nobody has.
    for folder in ["bob-private", "shared-rw"] {
        assert_eq!(missing_in(&mut bob, folder, &ids).await.unwrap(), ids);
        assert_eq!(missing_in(&mut bob, folder, &never).await.unwrap(), never);
        let e1 = get_chunks_in(&mut bob, folder, &ids[..1])
            .await
            .unwrap_err();
        let e2 = get_chunks_in(&mut bob, folder, &never[..1])
            .await
            .unwrap_err();
        assert_eq!((e1.code(), e2.code()), (Code::NotFound, Code::NotFound));
        let e = bob
            .get_manifest(pb::GetManifestRequest {
                manifest_id: Bytes::copy_from_slice(m.id().as_bytes()),
                folder: folder.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        // Asked for together, they are as absent: an answer without content.
        let r = bob
            .get_manifests(pb::GetManifestsRequest {
                manifest_ids: vec![Bytes::copy_from_slice(m.id().as_bytes())],
                folder: folder.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.manifests.len(), 1);
        assert!(r.manifests[0].content.is_none(), "{folder}");
        // Their signatures are as absent as those of chunks nobody has: length 0, no sums.
        let asked: Vec<u8> = ids
            .iter()
            .chain(&never)
            .flat_map(|id| *id.as_bytes())
            .collect();
        let r = bob
            .get_signatures(pb::GetSignaturesRequest {
                ids: asked.into(),
                folder: folder.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.signatures.len(), ids.len() + never.len());
        assert!(
            r.signatures
                .iter()
                .all(|s| *s == pb::ChunkSignature::default()),
            "{folder}: {:?}",
            r.signatures.first()
        );
        // Nor can he commit what names them, nor send a delta against them.
        let e = commit_file(&mut bob, folder, "x", &m, Content::Known(m.id()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let e = commit_file(&mut bob, folder, "x", &m, Content::Full(m.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        let mut edited = chunks[0].data().to_vec();
        edited[10] ^= 1;
        let edited = Bytes::from(edited);
        let delta = encode_chunk_against(
            ChunkId::of(&edited),
            &edited,
            &[chunks[0].id()],
            chunks[0].data(),
        );
        assert!(!delta.base_ids.is_empty(), "sent as a delta");
        let e = put_in(&mut bob, folder, vec![delta]).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    }
    // The admin sees the whole store.
    let mut admin = w.server.client_with_token(Some(ADMIN)).await;
    assert!(missing_in(&mut admin, "", &ids).await.unwrap().is_empty());

    // Bob uploads the same content: accepted, answered as stored, kept once.
    let stats = w.store.stats().unwrap();
    let sent = chunks
        .iter()
        .map(|c| encode_chunk(c.id(), c.data()))
        .collect();
    let r = put_in(&mut bob, "bob-private", sent).await.unwrap();
    assert_eq!((r.stored as usize, r.already_present), (ids.len(), 0));
    let after = w.store.stats().unwrap();
    assert_eq!(
        (after.chunks, after.raw_bytes),
        (stats.chunks, stats.raw_bytes)
    );
    assert!(
        missing_in(&mut bob, "bob-private", &ids)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(missing_in(&mut bob, "shared-rw", &ids).await.unwrap(), ids);
    commit_file(
        &mut bob,
        "bob-private",
        "mine.bin",
        &m,
        Content::Full(m.clone()),
    )
    .await
    .unwrap();
    let got = get_chunks_in(&mut bob, "bob-private", &ids).await.unwrap();
    assert_eq!(got.concat(), secret);
}

#[tokio::test]
async fn revoking_a_token_or_unsharing_ends_a_changes_stream_within_seconds() {
    let w = world().await;
    let users = SledUsers::open(w.store.db()).unwrap();
    let follow = |token: String| {
        let addr = w.server.addr;
        async move {
            let mut c = crate::util::connect(addr, Some(&token)).await;
            let mut s = c
                .changes(pb::ChangesRequest {
                    folder: "shared-rw".into(),
                    cursor: 0,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(s.message().await.unwrap().unwrap().caught_up);
            s
        }
    };
    let mut bob = follow(w.tokens["bob"].1.clone()).await;
    let mut one = follow(w.tokens["bob-one"].1.clone()).await;
    let mut alice = follow(w.tokens["alice"].1.clone()).await;

    assert!(users.revoke_token(&w.tokens["bob"].0).unwrap());
    let ended = tokio::time::timeout(Duration::from_secs(6), bob.message())
        .await
        .expect("the stream ends within seconds")
        .unwrap_err();
    assert_eq!(ended.code(), Code::Unauthenticated);
    assert!(ended.message().contains("revoked"), "{ended:?}");
    let mut c = w.server.client_with_token(Some(&w.tokens["bob"].1)).await;
    assert_eq!(
        hs(&mut c, "bob-private").await.unwrap_err().code(),
        Code::Unauthenticated
    );

    assert!(users.unshare("shared-rw", "bob").unwrap());
    let ended = tokio::time::timeout(Duration::from_secs(6), one.message())
        .await
        .expect("the stream ends within seconds")
        .unwrap_err();
    assert_eq!(ended.code(), Code::PermissionDenied);
    // The owner's stream carries on.
    assert!(
        tokio::time::timeout(Duration::from_secs(3), alice.message())
            .await
            .is_err()
    );
}
