//! End-to-end encrypted folders, as the server sees them: wrapped keys (set, read, compare-and-set,
//! limits, access, restarts), the server form of entries it insists on, masked manifests, sealed
//! chunks, the rules that differ from a plain folder (base 0 over a tombstone, restore), `sealed`
//! kept and served as sent, and records written before `sealed` existed.

#![allow(clippy::unwrap_used)] // tests: a failure is a test failure

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use lbsync_chunkstore::{Chunk, ChunkParams, ChunkRef, Manifest, PackStore};
use lbsync_proto::convert::max_sealed_chunk;
use lbsync_proto::wire::encode_chunk;
use lbsync_proto::{
    BatchOutcome, CommitOutcome, CommitRequest, Content, Entry, EntryKind, SyncPath, ids_to_bytes,
    pb,
};
use lbsync_server::folders::SledFolders;
use lbsync_server::meta::{FolderMeta, UserMeta};
use lbsync_server::users::SledUsers;
use lbsync_server::{ServerConfig, Tokens};
use prost::Message;
use tonic::{Code, Status};

use crate::util::*;

/// A sealed name as a client makes it: base64url of a 16-byte tag and 32 k bytes.
fn name(seed: u8, blocks: usize) -> String {
    let raw: Vec<u8> = (0..16 + 32 * blocks)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
        .collect();
    URL_SAFE_NO_PAD.encode(raw)
}

/// A sealed path of `depth` components.
fn sealed_path(seed: u8, depth: usize) -> SyncPath {
    let parts: Vec<String> = (0..depth)
        .map(|d| name(seed.wrapping_add(d as u8 * 17), 1 + d % 2))
        .collect();
    SyncPath::new(parts.join("/")).unwrap()
}

/// Bytes standing for a client's sealed metadata (the server cannot tell them apart).
fn sealed_meta(tag: u8) -> Vec<u8> {
    let mut v = vec![1u8];
    v.extend((0..90).map(|i| tag ^ (i as u8)));
    v
}

/// An entry in its server form: no size, mode, mtime or target; metadata sealed.
fn server_form(path: SyncPath, kind: EntryKind, deleted: bool, tag: u8) -> Entry {
    Entry {
        deleted,
        sealed: sealed_meta(tag),
        ..Entry::new(path, kind, "dev")
    }
}

fn key(kind: &str, label: &str, age: &[u8]) -> pb::WrappedKey {
    pb::WrappedKey {
        kind: kind.into(),
        label: label.into(),
        age: Bytes::copy_from_slice(age),
    }
}

async fn get_keys(c: &mut Client, folder: &str) -> Result<pb::FolderKeys, Status> {
    c.get_folder_keys(pb::GetFolderKeysRequest {
        folder: folder.into(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn set_keys(
    c: &mut Client,
    folder: &str,
    expected: u64,
    wrapped: Vec<pb::WrappedKey>,
) -> Result<pb::FolderKeys, Status> {
    c.set_folder_keys(pb::SetFolderKeysRequest {
        folder: folder.into(),
        expected_generation: expected,
        wrapped,
    })
    .await
    .map(|r| r.into_inner())
}

/// Opens `folder` and makes it encrypted.
async fn encrypted_folder(c: &mut Client, folder: &str) {
    let hs = handshake(c, folder).await;
    assert!(!hs.encrypted);
    let keys = set_keys(c, folder, 0, vec![key("passphrase", "", b"age-file")])
        .await
        .unwrap();
    assert_eq!(keys.generation, 1);
    assert!(handshake(c, folder).await.encrypted);
}

async fn try_commit(
    c: &mut Client,
    folder: &str,
    entry: Entry,
    base: u64,
    content: Option<Content>,
) -> Result<CommitOutcome, Status> {
    let r = c
        .commit(pb::CommitRequest::from(CommitRequest {
            folder: folder.into(),
            entry,
            base_version: base,
            content,
        }))
        .await?;
    Ok(r.into_inner().try_into().unwrap())
}

/// Uploads `chunks` through `folder`.
async fn put(
    c: &mut Client,
    folder: &str,
    chunks: &[Chunk],
) -> Result<pb::PutChunksResponse, Status> {
    let msg = pb::PutChunksRequest {
        chunks: chunks
            .iter()
            .map(|ch| encode_chunk(ch.id(), ch.data()))
            .collect(),
        folder: folder.into(),
        ..Default::default()
    };
    c.put_chunks(tokio_stream::iter(vec![msg]))
        .await
        .map(|r| r.into_inner())
}

/// "Sealed" chunks (random bytes) of these lengths, and a manifest of them whose lengths are
/// masked: random values that have nothing to do with the chunks' lengths or the chunking
/// parameters.
fn sealed_file(seed: u64, lens: &[usize]) -> (Vec<Chunk>, Manifest) {
    let chunks: Vec<Chunk> = lens
        .iter()
        .enumerate()
        .map(|(i, &len)| Chunk::new(seeded(len, seed * 1000 + i as u64)))
        .collect();
    let masks = seeded(4 * chunks.len(), seed + 7);
    let refs = chunks
        .iter()
        .zip(masks.chunks(4))
        .map(|(ch, m)| ChunkRef {
            id: ch.id(),
            len: (u32::from_le_bytes(m.try_into().unwrap()) & 0x7fff_ffff) + 1,
        })
        .collect();
    (chunks, Manifest::new(refs))
}

async fn changes_from(c: &mut Client, folder: &str, cursor: u64) -> Vec<Entry> {
    let mut s = c
        .changes(pb::ChangesRequest {
            folder: folder.into(),
            cursor,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    loop {
        let m = s.message().await.unwrap().expect("a replay ends caught up");
        out.extend(m.entries.into_iter().map(|e| Entry::try_from(e).unwrap()));
        if m.caught_up {
            return out;
        }
    }
}

async fn history_of(c: &mut Client, folder: &str, path: &SyncPath) -> Vec<Entry> {
    c.history(pb::HistoryRequest {
        folder: folder.into(),
        path: Bytes::copy_from_slice(path.as_str().as_bytes()),
        version: 0,
        raw_path: Default::default(),
    })
    .await
    .unwrap()
    .into_inner()
    .versions
    .into_iter()
    .map(|e| Entry::try_from(e).unwrap())
    .collect()
}

#[tokio::test]
async fn keys_are_set_read_compared_and_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let hs = handshake(&mut c, "vault").await;
    assert!(!hs.encrypted);
    assert_eq!(
        get_keys(&mut c, "vault").await.unwrap(),
        pb::FolderKeys::default()
    );

    let first = vec![key("passphrase", "", b"age scrypt file")];
    let keys = set_keys(&mut c, "vault", 0, first.clone()).await.unwrap();
    assert_eq!((keys.generation, &keys.wrapped), (1, &first));
    assert_eq!(get_keys(&mut c, "vault").await.unwrap(), keys);
    assert!(handshake(&mut c, "vault").await.encrypted);

    // A second device making it encrypted too, or re-keying from a stale read: ABORTED.
    let other = vec![key("passphrase", "", b"another key")];
    let s = set_keys(&mut c, "vault", 0, other.clone())
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Aborted, "{s:?}");
    assert!(s.message().contains("generation 1, not 0"), "{s:?}");
    assert!(s.message().contains("GetFolderKeys"), "{s:?}");
    let s = set_keys(&mut c, "vault", 5, other.clone())
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Aborted, "{s:?}");

    // Re-keying at the generation read: all keys replaced.
    let second = vec![
        key("passphrase", "", b"re-wrapped"),
        key("x25519", "age1someone", b"x25519 file"),
    ];
    let keys = set_keys(&mut c, "vault", 1, second.clone()).await.unwrap();
    assert_eq!((keys.generation, &keys.wrapped), (2, &second));

    // Limits: refused, nothing changed.
    let long_label = "l".repeat(257);
    for (wrapped, what) in [
        (vec![], "no wrapped key"),
        (vec![key("passphrase", "", b"k"); 17], "17 wrapped keys"),
        (vec![key("pgp", "", b"k")], "not one of"),
        (vec![key(&"x".repeat(33), "", b"k")], "not one of"),
        (vec![key("x25519", &long_label, b"k")], "label is 257 bytes"),
        (vec![key("x25519", "", &[7; 4097])], "4097 bytes"),
        (vec![key("x25519", "", b"")], "0 bytes"),
    ] {
        let s = set_keys(&mut c, "vault", 2, wrapped).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{what}: {s:?}");
        assert!(s.message().contains(what), "{what}: {s:?}");
    }
    // At the limits: accepted.
    let full: Vec<_> = (0..16)
        .map(|i| key("x25519", &"r".repeat(256), &[i as u8; 4096]))
        .collect();
    let keys = set_keys(&mut c, "vault", 2, full.clone()).await.unwrap();
    assert_eq!(keys.generation, 3);
    let keys = set_keys(&mut c, "vault", 3, second.clone()).await.unwrap();
    assert_eq!(keys.generation, 4);

    // A folder that does not exist has no keys to read or set.
    for s in [
        get_keys(&mut c, "nowhere").await.unwrap_err(),
        set_keys(&mut c, "nowhere", 0, first.clone())
            .await
            .unwrap_err(),
    ] {
        assert_eq!(s.code(), Code::NotFound, "{s:?}");
    }
    let s = get_keys(&mut c, "../bad").await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");

    // A folder with entries in the clear cannot become encrypted.
    handshake(&mut c, "plain").await;
    committed(
        try_commit(
            &mut c,
            "plain",
            Entry::dir(SyncPath::new("docs").unwrap(), "d"),
            0,
            None,
        )
        .await
        .unwrap(),
    );
    let s = set_keys(&mut c, "plain", 0, first.clone())
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(
        s.message().contains("already holds 1 entry in the clear")
            && s.message().contains("make a new folder"),
        "{s:?}"
    );
    assert!(!handshake(&mut c, "plain").await.encrypted);
    assert_eq!(get_keys(&mut c, "plain").await.unwrap().generation, 0);
    drop(c);
    server.stop().await;

    // Kept across a restart, and shown by stats.
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let keys = get_keys(&mut c, "vault").await.unwrap();
    assert_eq!((keys.generation, &keys.wrapped), (4, &second));
    assert!(handshake(&mut c, "vault").await.encrypted);
    assert!(!handshake(&mut c, "plain").await.encrypted);
    drop(c);
    server.stop().await;
    let store = PackStore::open(dir.path()).unwrap();
    let stats = lbsync_server::admin::stats(&lbsync_server::Backend::local(store.clone()).unwrap())
        .unwrap();
    assert_eq!((stats.folders, stats.encrypted_folders), (2, 1));
    assert_eq!(stats.to_json()["encrypted_folders"], 1);
}

/// Devices making one folder encrypted at once: exactly one wins, the rest are told to read
/// again, and the folder holds the winner's keys.
#[tokio::test]
async fn of_devices_making_a_folder_encrypted_at_once_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    handshake(&mut c, "race").await;
    let tasks: Vec<_> = (0..8u8)
        .map(|i| {
            let addr = server.addr;
            tokio::spawn(async move {
                let mut c = connect(addr, None).await;
                let wrapped = vec![key("passphrase", "", &[i; 40])];
                (i, set_keys(&mut c, "race", 0, wrapped).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (i, Ok(keys)) => winners.push((i, keys)),
            (_, Err(s)) => assert_eq!(s.code(), Code::Aborted, "{s:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let (i, keys) = &winners[0];
    assert_eq!(keys.generation, 1);
    assert_eq!(
        get_keys(&mut c, "race").await.unwrap().wrapped[0].age[..],
        [*i; 40]
    );
}

/// Reading the keys needs read access, setting them write access: a read-only token or share
/// reads them and is refused a change; a stranger gets nothing.
#[tokio::test]
async fn keys_need_read_access_to_read_and_write_access_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    let users = SledUsers::open(store.db()).unwrap();
    for u in ["alice", "bob", "carol"] {
        users.add_user(u).unwrap();
    }
    let (_, alice) = users.create_token("alice", false, None).unwrap();
    let (_, alice_ro) = users.create_token("alice", true, None).unwrap();
    let (_, bob) = users.create_token("bob", false, None).unwrap();
    let (_, carol) = users.create_token("carol", false, None).unwrap();
    let config = ServerConfig {
        tokens: Tokens::parse("admin-secret\n"),
        ..ServerConfig::default()
    };
    let server = TestServer::start_store(store.clone(), config).await;
    let mut a = server.client_with_token(Some(&alice)).await;
    encrypted_folder(&mut a, "alice-vault").await;
    users.share("alice-vault", "bob", true).unwrap();
    let want = get_keys(&mut a, "alice-vault").await.unwrap();
    let new_keys = vec![key("passphrase", "", b"mine now")];

    for (token, name) in [
        (&alice_ro, "alice's read-only token"),
        (&bob, "bob (read-only share)"),
    ] {
        let mut c = server.client_with_token(Some(token)).await;
        assert_eq!(
            get_keys(&mut c, "alice-vault").await.unwrap(),
            want,
            "{name}"
        );
        let s = set_keys(&mut c, "alice-vault", 1, new_keys.clone())
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied, "{name}: {s:?}");
        assert!(s.message().contains("nothing was changed"), "{name}: {s:?}");
    }
    let mut c = server.client_with_token(Some(&carol)).await;
    for s in [
        get_keys(&mut c, "alice-vault").await.unwrap_err(),
        set_keys(&mut c, "alice-vault", 1, new_keys.clone())
            .await
            .unwrap_err(),
    ] {
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    }
    let mut c = server.client().await;
    let s = get_keys(&mut c, "alice-vault").await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert_eq!(get_keys(&mut a, "alice-vault").await.unwrap(), want);

    // The owner and the admin may change them.
    let keys = set_keys(&mut a, "alice-vault", 1, new_keys.clone())
        .await
        .unwrap();
    assert_eq!(keys.generation, 2);
    let mut admin = server.client_with_token(Some("admin-secret")).await;
    assert_eq!(
        set_keys(&mut admin, "alice-vault", 2, new_keys)
            .await
            .unwrap()
            .generation,
        3
    );
}

/// An encrypted folder takes only entries in their server form; nothing refused is stored.
#[tokio::test]
async fn an_encrypted_folder_refuses_entries_that_are_not_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    encrypted_folder(&mut c, "vault").await;
    let (chunks, m) = sealed_file(1, &[5000]);
    put(&mut c, "vault", &chunks).await.unwrap();
    let p = sealed_path(1, 2);
    let file = || server_form(p.clone(), EntryKind::File, false, 1);
    let refused: Vec<(Entry, &str)> = vec![
        (
            Entry {
                sealed: Vec::new(),
                ..file()
            },
            "has no sealed metadata",
        ),
        (
            Entry {
                size: m.size(),
                ..file()
            },
            "size, mode or mtime",
        ),
        (
            Entry {
                size: 5000,
                ..file()
            },
            "size, mode or mtime",
        ),
        (
            Entry {
                mode: 0o644,
                ..file()
            },
            "size, mode or mtime",
        ),
        (
            Entry {
                mtime_ns: 1,
                ..file()
            },
            "size, mode or mtime",
        ),
        (
            Entry {
                path: SyncPath::new("notes/plan.txt").unwrap(),
                ..file()
            },
            "component 1 is not a sealed name",
        ),
        (
            Entry {
                path: SyncPath::new(format!("{}/plan.txt", name(3, 1))).unwrap(),
                ..file()
            },
            "component 2 is not a sealed name",
        ),
        (
            // Base64url, but not 16 + 32k bytes.
            Entry {
                path: SyncPath::new(URL_SAFE_NO_PAD.encode([9u8; 40])).unwrap(),
                ..file()
            },
            "is not a sealed name",
        ),
    ];
    for (entry, what) in refused {
        let s = try_commit(
            &mut c,
            "vault",
            entry.clone(),
            0,
            Some(Content::Full(m.clone())),
        )
        .await
        .unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{what}: {s:?}");
        assert!(s.message().contains(what), "{what}: {s:?}");
        assert!(s.message().contains("nothing was committed"), "{s:?}");
        // A plaintext path is not repeated back (nor logged).
        assert!(!s.message().contains("plan.txt"), "{s:?}");
    }
    let s = try_commit(
        &mut c,
        "vault",
        Entry {
            symlink_target: Some("/etc/passwd".into()),
            ..server_form(sealed_path(2, 1), EntryKind::Symlink, false, 2)
        },
        0,
        None,
    )
    .await
    .unwrap_err();
    assert!(s.message().contains("symlink target"), "{s:?}");
    // A batch refuses them one by one; the sealed one beside them commits.
    let r = c
        .commit_batch(pb::CommitBatchRequest {
            folder: "vault".into(),
            device: "dev".into(),
            commits: vec![
                CommitRequest {
                    folder: "vault".into(),
                    entry: Entry::dir(SyncPath::new("clear").unwrap(), "dev"),
                    base_version: 0,
                    content: None,
                }
                .into(),
                CommitRequest {
                    folder: "vault".into(),
                    entry: server_form(sealed_path(4, 1), EntryKind::Dir, false, 4),
                    base_version: 0,
                    content: None,
                }
                .into(),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<BatchOutcome> = r
        .results
        .into_iter()
        .map(|o| o.try_into().unwrap())
        .collect();
    assert!(
        matches!(&outcomes[0], BatchOutcome::Invalid(why) if why.contains("has no sealed metadata")),
        "{outcomes:?}"
    );
    assert!(
        matches!(
            outcomes[1],
            BatchOutcome::Committed {
                version: 1,
                seq: 1,
                ..
            }
        ),
        "{outcomes:?}"
    );
    assert_eq!(
        handshake(&mut c, "vault").await.head,
        1,
        "only the sealed entry committed"
    );
}

/// What an encrypted folder accepts: masked manifests (lengths that break the chunking
/// parameters and add up to nothing the entry says), in full and as deltas; directories, a
/// symlink without a target, tombstones, all sealed. Limits on refs and stored chunks still hold.
#[tokio::test]
async fn an_encrypted_folder_takes_masked_manifests_and_sealed_entries() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    encrypted_folder(&mut c, "vault").await;
    let (chunks, m) = sealed_file(2, &[300, 9000, 70_000, 20]);
    assert!(
        m.chunks().iter().any(|r| r.len > 1 << 20),
        "lengths outside any chunking class"
    );
    put(&mut c, "vault", &chunks).await.unwrap();
    let p = sealed_path(5, 3);
    let v1 = committed(
        try_commit(
            &mut c,
            "vault",
            server_form(p.clone(), EntryKind::File, false, 1),
            0,
            Some(Content::Full(m.clone())),
        )
        .await
        .unwrap(),
    );
    assert_eq!((v1.version, v1.size, v1.manifest), (1, 0, Some(m.id())));
    // A delta on it: one chunk replaced, again with a masked length.
    let (more, m2) = sealed_file(3, &[4000]);
    put(&mut c, "vault", &more).await.unwrap();
    let mut refs = m.chunks().to_vec();
    refs[1] = m2.chunks()[0];
    let edited = Manifest::new(refs);
    let delta = lbsync_chunkstore::ManifestDelta::diff(&m, &edited);
    let v2 = committed(
        try_commit(
            &mut c,
            "vault",
            server_form(p.clone(), EntryKind::File, false, 2),
            1,
            Some(Content::Delta {
                base: m.id(),
                delta,
            }),
        )
        .await
        .unwrap(),
    );
    assert_eq!((v2.version, v2.manifest), (2, Some(edited.id())));
    // Chunks not stored: refused, as anywhere.
    let (absent, m3) = sealed_file(4, &[100]);
    let s = try_commit(
        &mut c,
        "vault",
        server_form(sealed_path(6, 1), EntryKind::File, false, 3),
        0,
        Some(Content::Full(m3)),
    )
    .await
    .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains(&absent[0].id().to_string()), "{s:?}");
    // Directory, symlink (its target sealed), tombstone.
    for (entry, tag) in [
        (server_form(sealed_path(7, 1), EntryKind::Dir, false, 4), 4),
        (
            server_form(sealed_path(8, 2), EntryKind::Symlink, false, 5),
            5,
        ),
    ] {
        let e = committed(try_commit(&mut c, "vault", entry, 0, None).await.unwrap());
        assert_eq!(e.sealed, sealed_meta(tag));
    }
    let gone = committed(
        try_commit(
            &mut c,
            "vault",
            server_form(p.clone(), EntryKind::File, true, 6),
            2,
            None,
        )
        .await
        .unwrap(),
    );
    assert!(gone.deleted && gone.manifest.is_none());
    assert_eq!(gone.sealed, sealed_meta(6));
}

/// The ref limit of a commit holds in an encrypted folder, where only the count can be checked.
#[tokio::test]
async fn a_masked_manifest_over_the_ref_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        limits: lbsync_server::Limits {
            max_manifest_refs: 3,
            ..Default::default()
        },
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    let mut c = server.client().await;
    encrypted_folder(&mut c, "vault").await;
    let (chunks, m) = sealed_file(9, &[10, 20, 30, 40]);
    put(&mut c, "vault", &chunks).await.unwrap();
    let s = try_commit(
        &mut c,
        "vault",
        server_form(sealed_path(9, 1), EntryKind::File, false, 1),
        0,
        Some(Content::Full(m)),
    )
    .await
    .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().contains("4 chunks, over the limit of 3"),
        "{s:?}"
    );
}

/// A plain folder keeps its rules: no `sealed`, and base 0 recreates over a tombstone; an
/// encrypted one answers that with a conflict showing the tombstone.
#[tokio::test]
async fn base_zero_over_a_tombstone_conflicts_only_in_an_encrypted_folder() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    handshake(&mut c, "plain").await;
    let s = try_commit(
        &mut c,
        "plain",
        Entry {
            sealed: sealed_meta(1),
            ..Entry::dir(SyncPath::new("d").unwrap(), "dev")
        },
        0,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("is not encrypted"), "{s:?}");
    let d = SyncPath::new("d").unwrap();
    committed(
        try_commit(&mut c, "plain", Entry::dir(d.clone(), "dev"), 0, None)
            .await
            .unwrap(),
    );
    committed(
        try_commit(
            &mut c,
            "plain",
            Entry::tombstone(d.clone(), EntryKind::Dir, "dev"),
            1,
            None,
        )
        .await
        .unwrap(),
    );
    let again = committed(
        try_commit(&mut c, "plain", Entry::dir(d.clone(), "dev"), 0, None)
            .await
            .unwrap(),
    );
    assert_eq!(again.version, 3);

    encrypted_folder(&mut c, "vault").await;
    let p = sealed_path(3, 1);
    committed(
        try_commit(
            &mut c,
            "vault",
            server_form(p.clone(), EntryKind::Dir, false, 1),
            0,
            None,
        )
        .await
        .unwrap(),
    );
    let tomb = committed(
        try_commit(
            &mut c,
            "vault",
            server_form(p.clone(), EntryKind::Dir, true, 2),
            1,
            None,
        )
        .await
        .unwrap(),
    );
    let CommitOutcome::Conflict(current) = try_commit(
        &mut c,
        "vault",
        server_form(p.clone(), EntryKind::Dir, false, 3),
        0,
        None,
    )
    .await
    .unwrap() else {
        panic!("base 0 over a tombstone commits in an encrypted folder")
    };
    assert_eq!(current, tomb);
    assert!(current.deleted && current.version == 2);
    // Retried on the tombstone's version, as the client does.
    let back = committed(
        try_commit(
            &mut c,
            "vault",
            server_form(p.clone(), EntryKind::Dir, false, 3),
            2,
            None,
        )
        .await
        .unwrap(),
    );
    assert_eq!(back.version, 3);
    // A path never seen still takes base 0.
    committed(
        try_commit(
            &mut c,
            "vault",
            server_form(sealed_path(4, 1), EntryKind::Dir, false, 4),
            0,
            None,
        )
        .await
        .unwrap(),
    );
}

#[tokio::test]
async fn restore_is_refused_in_an_encrypted_folder() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    encrypted_folder(&mut c, "vault").await;
    let p = sealed_path(1, 1);
    committed(
        try_commit(
            &mut c,
            "vault",
            server_form(p.clone(), EntryKind::Dir, false, 1),
            0,
            None,
        )
        .await
        .unwrap(),
    );
    committed(
        try_commit(
            &mut c,
            "vault",
            server_form(p.clone(), EntryKind::Dir, true, 2),
            1,
            None,
        )
        .await
        .unwrap(),
    );
    let s = c
        .restore(pb::RestoreRequest {
            folder: "vault".into(),
            path: Bytes::copy_from_slice(p.as_str().as_bytes()),
            version: 1,
            device: "dev".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert_eq!(
        s.message(),
        "folder vault is encrypted: restore is done by the client, which commits the old \
         version's manifest again"
    );
    assert_eq!(
        handshake(&mut c, "vault").await.head,
        2,
        "nothing committed"
    );
}

/// `sealed` is stored as sent and comes back the same through Changes, History and a commit's
/// answer, before and after a restart.
#[tokio::test]
async fn sealed_metadata_round_trips_through_changes_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    encrypted_folder(&mut c, "vault").await;
    let (chunks, m) = sealed_file(5, &[1000, 2000]);
    put(&mut c, "vault", &chunks).await.unwrap();
    let p = sealed_path(11, 2);
    let mut sent = Vec::new();
    for (base, tag) in [(0, 10u8), (1, 11)] {
        let mut entry = server_form(p.clone(), EntryKind::File, false, tag);
        // As long as allowed.
        entry.sealed = seeded(lbsync_proto::convert::MAX_SEALED_BYTES, u64::from(tag));
        let content = if base == 0 {
            Content::Full(m.clone())
        } else {
            Content::Known(m.id())
        };
        let e = committed(
            try_commit(&mut c, "vault", entry.clone(), base, Some(content))
                .await
                .unwrap(),
        );
        assert_eq!(e.sealed, entry.sealed);
        sent.push(entry.sealed);
    }
    // One over the limit: refused by the conversion.
    let mut big = server_form(p.clone(), EntryKind::File, true, 1);
    big.sealed = vec![0; lbsync_proto::convert::MAX_SEALED_BYTES + 1];
    let raw = pb::CommitRequest::from(CommitRequest {
        folder: "vault".into(),
        entry: big,
        base_version: 2,
        content: None,
    });
    let s = c.commit(raw).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");

    let check = |changes: Vec<Entry>, history: Vec<Entry>| {
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].sealed, sent[1]);
        assert_eq!(changes[0].path, p);
        let got: Vec<_> = history
            .iter()
            .map(|e| (e.version, e.sealed.clone()))
            .collect();
        assert_eq!(got, vec![(2, sent[1].clone()), (1, sent[0].clone())]);
    };
    check(
        changes_from(&mut c, "vault", 0).await,
        history_of(&mut c, "vault", &p).await,
    );
    drop(c);
    server.stop().await;
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    check(
        changes_from(&mut c, "vault", 0).await,
        history_of(&mut c, "vault", &p).await,
    );
    // fsck still follows the (masked) manifests to their chunks.
    drop(c);
    server.stop().await;
    let store = PackStore::open(dir.path()).unwrap();
    let fsck = lbsync_server::admin::fsck(&store, false).unwrap();
    assert!(fsck.is_clean(), "{fsck}");
    assert_eq!(fsck.files_checked, 2);
}

/// An encrypted folder's chunks may be up to the largest chunk plus the sealing overhead, and
/// come back as stored (no zstd, even when they would compress), or, when the client offers
/// bases, as a delta of the stored bytes against the stored bases.
#[tokio::test]
async fn sealed_chunks_may_be_a_little_longer_and_are_served_as_stored_or_as_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let hs = handshake(&mut c, "plain").await;
    let params = ChunkParams::try_from(hs.params.unwrap()).unwrap();
    let largest = params.largest_chunk() as usize;
    encrypted_folder(&mut c, "vault").await;
    let at_limit = Chunk::new(vec![b'a'; max_sealed_chunk(largest as u32) as usize]);
    let over = Chunk::new(vec![b'b'; max_sealed_chunk(largest as u32) as usize + 1]);
    let s = put(&mut c, "vault", std::slice::from_ref(&over))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    let s = put(&mut c, "plain", std::slice::from_ref(&at_limit))
        .await
        .unwrap_err();
    assert_eq!(
        s.code(),
        Code::InvalidArgument,
        "a plain folder keeps its limit: {s:?}"
    );
    let r = put(&mut c, "vault", std::slice::from_ref(&at_limit))
        .await
        .unwrap();
    assert_eq!(r.stored, 1);
    // The hash check holds.
    let mut lie = encode_chunk(at_limit.id(), &Bytes::from(vec![b'c'; 100]));
    lie.id = Bytes::copy_from_slice(over.id().as_bytes());
    let s = c
        .put_chunks(tokio_stream::iter(vec![pb::PutChunksRequest {
            chunks: vec![lie],
            folder: "vault".into(),
            ..Default::default()
        }]))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");

    let small = Chunk::new(vec![b'z'; 20_000]);
    // Sealed chunks are random-looking; an edited one shares most bytes with its predecessor.
    let old = Chunk::new(random_bytes(20_000, 5));
    let mut edited = old.data().to_vec();
    edited[10_000..10_100].copy_from_slice(&random_bytes(100, 6));
    let edited = Chunk::new(edited);
    put(
        &mut c,
        "vault",
        &[small.clone(), old.clone(), edited.clone()],
    )
    .await
    .unwrap();
    let ids = [at_limit.id(), small.id(), edited.id()];
    let fetch = |c: &mut Client, folder: &str, bases: bool| {
        let req = pb::GetChunksRequest {
            ids: ids_to_bytes(&ids),
            folder: folder.into(),
            bases: if bases {
                vec![Bytes::new(), Bytes::new(), ids_to_bytes(&[old.id()])]
            } else {
                Vec::new()
            },
            // Asked, but an encrypted folder's chunks never go in a together frame.
            together: true,
        };
        let mut c = c.clone();
        async move {
            let mut s = c.get_chunks(req).await.unwrap().into_inner();
            let mut got = Vec::new();
            while let Some(m) = s.message().await.unwrap() {
                assert!(m.together.is_empty());
                got.extend(m.chunks);
            }
            got
        }
    };
    let got = fetch(&mut c, "vault", false).await;
    assert_eq!(got.len(), 3);
    for (cd, want) in got.iter().zip([&at_limit, &small, &edited]) {
        assert_eq!(cd.compression, pb::Compression::None as i32);
        assert!(cd.base_ids.is_empty());
        assert_eq!(cd.id[..], want.id().as_bytes()[..]);
        assert_eq!(cd.data[..], want.data()[..]);
    }
    let got = fetch(&mut c, "vault", true).await;
    assert_eq!(got.len(), 3);
    for (cd, want) in got.iter().zip([&at_limit, &small]) {
        assert_eq!(cd.compression, pb::Compression::None as i32);
        assert_eq!(cd.data[..], want.data()[..]);
    }
    let delta = got[2].clone();
    assert_eq!(delta.base_ids[..], old.id().as_bytes()[..]);
    assert!(delta.data.len() < 1000, "{} bytes", delta.data.len());
    let back = lbsync_proto::wire::decode_chunk_against(delta, 1 << 20, Some(old.data())).unwrap();
    assert_eq!(back.data()[..], edited.data()[..]);
    // The same chunk through a plain folder is compressed, as before.
    put(&mut c, "plain", std::slice::from_ref(&small))
        .await
        .unwrap();
    let req = pb::GetChunksRequest {
        ids: ids_to_bytes(&[small.id()]),
        folder: "plain".into(),
        ..Default::default()
    };
    let mut s = c.get_chunks(req).await.unwrap().into_inner();
    let m = s.message().await.unwrap().unwrap();
    assert_eq!(m.chunks[0].compression, pb::Compression::Zstd as i32);
}

/// An entry as servers stored it before `sealed` existed: the fields of `lbsync.v1.Entry` 1–12.
#[derive(Clone, PartialEq, prost::Message)]
struct OldEntry {
    #[prost(bytes = "vec", tag = "1")]
    path: Vec<u8>,
    #[prost(int32, tag = "2")]
    kind: i32,
    #[prost(uint64, tag = "3")]
    size: u64,
    #[prost(uint32, tag = "4")]
    mode: u32,
    #[prost(int64, tag = "5")]
    mtime_ns: i64,
    #[prost(bytes = "vec", tag = "6")]
    manifest_id: Vec<u8>,
    #[prost(uint64, tag = "7")]
    version: u64,
    #[prost(bool, tag = "8")]
    deleted: bool,
    #[prost(string, tag = "9")]
    device: String,
    #[prost(string, tag = "10")]
    symlink_target: String,
    #[prost(uint64, tag = "11")]
    seq: u64,
    #[prost(int64, tag = "12")]
    committed_ns: i64,
}

/// Records written before `sealed` existed read as entries without it: listed, replayed, shown
/// in history and committed over as before.
#[tokio::test]
async fn records_written_before_sealed_existed_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    let folders = SledFolders::open(store.db()).unwrap();
    folders.ensure("old").unwrap();
    let old = OldEntry {
        path: b"notes/todo.txt".to_vec(),
        kind: pb::EntryKind::Symlink as i32,
        size: 0,
        mode: 0o777,
        mtime_ns: 1_700_000_000_000_000_000,
        manifest_id: Vec::new(),
        version: 1,
        deleted: false,
        device: "laptop".into(),
        symlink_target: "../elsewhere".into(),
        seq: 1,
        committed_ns: 1_700_000_000_100_000_000,
    };
    let bytes = old.encode_to_vec();
    // The layout of folders.rs: current entry, history record, journal record, head.
    let db = store.db();
    db.open_tree("folder/old/entries")
        .unwrap()
        .insert(&old.path, bytes.as_slice())
        .unwrap();
    let mut hkey = old.path.clone();
    hkey.push(0);
    hkey.extend_from_slice(&1u64.to_be_bytes());
    db.open_tree("folder/old/history")
        .unwrap()
        .insert(&hkey, bytes.as_slice())
        .unwrap();
    db.open_tree("folder/old/journal")
        .unwrap()
        .insert(1u64.to_be_bytes(), hkey.as_slice())
        .unwrap();
    db.open_tree("folders")
        .unwrap()
        .insert("old", &1u64.to_be_bytes())
        .unwrap();
    let server = TestServer::start_store(store.clone(), ServerConfig::default()).await;
    let mut c = server.client().await;
    let hs = handshake(&mut c, "old").await;
    assert_eq!((hs.head, hs.encrypted), (1, false));
    let want = Entry {
        mode: 0o777,
        mtime_ns: old.mtime_ns,
        symlink_target: Some("../elsewhere".into()),
        version: 1,
        seq: 1,
        committed_ns: old.committed_ns,
        ..Entry::new(
            SyncPath::new("notes/todo.txt").unwrap(),
            EntryKind::Symlink,
            "laptop",
        )
    };
    assert!(want.sealed.is_empty());
    assert_eq!(changes_from(&mut c, "old", 0).await, vec![want.clone()]);
    let p = want.path.clone();
    assert_eq!(history_of(&mut c, "old", &p).await, vec![want.clone()]);
    let next = committed(
        try_commit(
            &mut c,
            "old",
            Entry::tombstone(p.clone(), EntryKind::Symlink, "d"),
            1,
            None,
        )
        .await
        .unwrap(),
    );
    assert_eq!((next.version, next.seq), (2, 2));
    // The old record is still there, as it was; a record of today without `sealed` is the same
    // bytes as an old one.
    assert_eq!(history_of(&mut c, "old", &p).await[1], want);
    assert_eq!(pb::Entry::from(want).encode_to_vec(), bytes);
    // And such a folder, with an entry in the clear, cannot become encrypted.
    let s = set_keys(&mut c, "old", 0, vec![key("passphrase", "", b"k")])
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
}

/// What `Folders` does when a folder is made encrypted between a commit's checks and its
/// transaction: the commit checked as plain is refused, and nothing of it is stored.
#[test]
fn a_commit_checked_as_plain_does_not_land_in_a_folder_made_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path()).open().unwrap();
    let folders = SledFolders::open(&db).unwrap();
    folders.ensure("f").unwrap();
    folders
        .set_keys("f", 0, vec![key("passphrase", "", b"k")])
        .unwrap();
    let e = Entry::dir(SyncPath::new("clear").unwrap(), "d");
    let (outcomes, failed) = folders
        .commit_batch_checked("f", vec![(e, 0)], false)
        .unwrap();
    assert!(outcomes.is_empty());
    let err = failed.unwrap();
    assert!(
        matches!(err, lbsync_server::Error::Precondition(_)),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("made encrypted while this commit"),
        "{err}"
    );
    assert_eq!(folders.head("f").unwrap(), 0);
    assert!(folders.current_entries("f").unwrap().is_empty());
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}
