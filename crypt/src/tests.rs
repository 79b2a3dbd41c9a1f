use lbsync_chunkstore::{ChunkRef, Manifest, ManifestId};
use lbsync_proto::EntryKind;
use proptest::prelude::*;
use rand::{RngCore, SeedableRng};

use super::*;

fn crypt() -> FolderCrypt {
    FolderKey::from_bytes([42; 32]).crypt()
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Text-like data: words of a seeded random vocabulary, in random order (compresses about 2-3x
/// with zstd level 1, like prose or source code).
fn text_bytes(n: usize) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let vocab: Vec<Vec<u8>> = (0..2000)
        .map(|_| {
            let len = 2 + (rng.next_u32() % 9) as usize;
            (0..len)
                .map(|_| b'a' + (rng.next_u32() % 26) as u8)
                .collect()
        })
        .collect();
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        let r = rng.next_u32();
        // Zipf-like: small indices far more often.
        let i = ((r % 2000) * (r >> 21 & 1023) / 1024) as usize;
        out.extend_from_slice(&vocab[i]);
        out.push(if r % 13 == 0 { b'\n' } else { b' ' });
    }
    out.truncate(n);
    out
}

fn is_tampered<T: std::fmt::Debug>(r: Result<T>) -> bool {
    matches!(r, Err(Error::Tampered { .. }))
}

// ---- chunks ----

#[test]
fn chunks_round_trip_raw_and_compressed() {
    let c = crypt();
    for pt in [
        b"".to_vec(),
        b"x".to_vec(),
        random_bytes(100, 1),
        random_bytes(64 << 10, 2),
        text_bytes(20_000),
        vec![0u8; 1 << 20],
    ] {
        let s = c.seal_chunk(&pt);
        assert_eq!(
            s.id,
            ChunkId::of(&s.bytes),
            "the id is the plain hash of the bytes"
        );
        assert_eq!(s.bytes[0], CHUNK_FORMAT);
        assert_eq!(c.open_chunk(&s.id, &s.bytes, pt.len()).unwrap(), pt);
    }
    // Random data is stored raw (a format byte, then 18 bytes a block of about 576), text
    // compressed block by block.
    let r = random_bytes(32 << 10, 3);
    let sealed = c.seal_chunk(&r).bytes.len();
    let blocks = chunk::blocks(&r).count();
    assert_eq!(sealed, r.len() + 1 + blocks * BLOCK_OVERHEAD);
    assert!(sealed <= max_sealed_len(r.len()));
    assert!(((32 << 10) / BLOCK_MAX..=(32 << 10) / BLOCK_MIN + 1).contains(&blocks));
    assert!(
        sealed < r.len() + r.len() / 20,
        "{sealed}: overhead under 5%"
    );
    let t = text_bytes(32 << 10);
    assert!(c.seal_chunk(&t).bytes.len() < t.len() * 3 / 4);
    // The bound holds for any length, blocks of the least size included.
    for n in [1, 255, 256, 257, 511, 4096, 70_000] {
        let z = vec![0u8; n];
        assert!(c.seal_chunk(&z).bytes.len() <= max_sealed_len(n), "{n}");
        let r = random_bytes(n, n as u64);
        assert!(c.seal_chunk(&r).bytes.len() <= max_sealed_len(n), "{n}");
    }
}

#[test]
fn an_edited_chunk_shares_its_sealed_blocks_with_the_one_it_replaced() {
    let c = crypt();
    for (name, old) in [
        ("random", random_bytes(8 << 10, 11)),
        ("text", text_bytes(8 << 10)),
    ] {
        let noise = random_bytes(100, 12);
        let mut inserted = old.clone();
        inserted.insert(old.len() / 2, b'!');
        let mut overwritten = old.clone();
        overwritten[3000..3100].copy_from_slice(&noise);
        let edits = [
            ("insert 1 byte in the middle", inserted),
            ("overwrite 100 bytes", overwritten),
            ("prepend 100 bytes", [&noise[..], &old].concat()),
            ("append 100 bytes", [&old[..], &noise[..]].concat()),
            // A file-level cut that moved: the chunk now starts 1000 bytes further on.
            ("start 1000 bytes later", old[1000..].to_vec()),
        ];
        let so = c.seal_chunk(&old);
        for (what, new) in edits {
            let sn = c.seal_chunk(&new);
            assert_ne!(so.id, sn.id);
            // What the server sends for the edited chunk to a client that holds the old one.
            let delta = lbsync_chunkstore::compress_against(&sn.bytes, &so.bytes).unwrap();
            assert!(
                delta.len() < 3 * BLOCK_AVG,
                "{name}, {what}: the delta is {} bytes of {}",
                delta.len(),
                sn.bytes.len()
            );
        }
        let whole = lbsync_chunkstore::compress_against(&so.bytes, &[]).unwrap();
        assert!(
            whole.len() > so.bytes.len() * 9 / 10,
            "{name}: sealed bytes do not compress"
        );
    }
}

#[test]
fn the_compression_decision_rests_on_the_block_alone() {
    let t = text_bytes(2048);
    let r = random_bytes(2048, 8);
    assert!(chunk::compressed(&t).is_some());
    assert!(chunk::compressed(&r).is_none());
    assert!(chunk::compressed(&t[..300]).is_some());
    assert!(chunk::compressed(&r[..300]).is_none());
    // Hex and base64 compress; tiny blocks are not tried.
    let hex: Vec<u8> = r
        .iter()
        .flat_map(|b| format!("{b:02x}").into_bytes())
        .collect();
    assert!(chunk::compressed(&hex[..2048]).is_some());
    assert!(chunk::compressed(&t[..63]).is_none());
    // The histogram looks at the first 512 bytes: a block that starts random is sealed raw even
    // if the rest would compress (a cost in bytes, never in correctness), and one that starts
    // compressible is compressed only when the whole saves 1/32.
    let random_head = [&r[..512], &t[..1536]].concat();
    assert!(chunk::compressed(&random_head).is_none());
    let text_head = [&t[..512], &r[..1536]].concat();
    assert!(chunk::compressed(&text_head).is_none());
    let t = text_bytes(16 << 10);
    // The same bytes, the same decision, whatever was sealed before (no state between chunks).
    let c = crypt();
    let first = c.seal_chunk(&t);
    for _ in 0..10 {
        c.seal_chunk(&r);
    }
    assert_eq!(c.seal_chunk(&t), first);
}

#[test]
fn chunks_are_deterministic_per_folder_and_differ_across_folders() {
    let a = crypt();
    let b = FolderKey::from_bytes([43; 32]).crypt();
    let pt = text_bytes(10_000);
    let (s1, s2) = (a.seal_chunk(&pt), a.clone().seal_chunk(&pt));
    assert_eq!(s1, s2, "same key, same plaintext: same id and bytes");
    assert_eq!(FolderKey::from_bytes([42; 32]).crypt().seal_chunk(&pt), s1);
    let other = b.seal_chunk(&pt);
    assert_ne!(other.id, s1.id, "another folder's key gives another id");
    assert_ne!(
        s1.id,
        ChunkId::of(&pt),
        "the id is not the plaintext's hash"
    );
    assert!(
        is_tampered(b.open_chunk(&s1.id, &s1.bytes, 1 << 20)),
        "another folder cannot open it"
    );
}

#[test]
fn every_flipped_byte_of_a_sealed_chunk_is_tampered() {
    let c = crypt();
    for pt in [random_bytes(300, 4), text_bytes(3000)] {
        let s = c.seal_chunk(&pt);
        for i in 0..s.bytes.len() {
            let mut bad = s.bytes.to_vec();
            bad[i] ^= 0x01;
            // With the id of the damaged bytes (a server that also fixes up the id) ...
            assert!(
                is_tampered(c.open_chunk(&ChunkId::of(&bad), &bad, 1 << 20)),
                "byte {i}"
            );
            // ... and with the manifest's id.
            assert!(is_tampered(c.open_chunk(&s.id, &bad, 1 << 20)), "byte {i}");
        }
    }
}

#[test]
fn wrong_id_truncation_and_oversize_are_tampered() {
    let c = crypt();
    let s = c.seal_chunk(&text_bytes(5000));
    let other = c.seal_chunk(b"other");
    assert!(
        is_tampered(c.open_chunk(&other.id, &s.bytes, 1 << 20)),
        "swapped chunks"
    );
    // A cut inside a block is caught by the block; any cut by the id the manifest names (a
    // cut at a block's end is a run of good blocks, which only the id tells apart).
    let ends = record_ends(&s.bytes);
    assert!(ends.len() > 3);
    for n in [0, 1, 2, 10, 18, 19, s.bytes.len() - 1] {
        let cut = &s.bytes[..n];
        if !ends.contains(&n) {
            assert!(
                is_tampered(c.open_chunk(&ChunkId::of(cut), cut, 1 << 20)),
                "cut to {n}"
            );
        }
        assert!(is_tampered(c.open_chunk(&s.id, cut, 1 << 20)), "cut to {n}");
    }
    for &n in ends.iter().filter(|&&n| n < s.bytes.len()) {
        let cut = &s.bytes[..n];
        assert!(is_tampered(c.open_chunk(&s.id, cut, 1 << 20)), "cut to {n}");
    }
    // More plaintext than the caller allows is refused (raw and compressed).
    assert!(is_tampered(c.open_chunk(&s.id, &s.bytes, 4999)));
    let r = c.seal_chunk(&random_bytes(5000, 5));
    assert!(is_tampered(c.open_chunk(&r.id, &r.bytes, 4999)));
    assert!(c.open_chunk(&r.id, &r.bytes, 5000).is_ok());
    let err = c
        .open_chunk(&other.id, &s.bytes, 1 << 20)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&other.id.to_string()), "{err}");
    assert!(
        err.contains("not written by a holder of this folder's key"),
        "{err}"
    );
}

/// Where each block record of a format-2 chunk ends (offsets into `sealed`).
fn record_ends(sealed: &[u8]) -> Vec<usize> {
    let mut ends = vec![1];
    let mut at = 1;
    while at < sealed.len() {
        let (mut v, mut i) = (0usize, 0);
        loop {
            let x = sealed[at + i];
            v |= usize::from(x & 0x7f) << (7 * i);
            i += 1;
            if x & 0x80 == 0 {
                break;
            }
        }
        at += i + 16 + (v >> 1);
        ends.push(at);
    }
    assert_eq!(at, sealed.len());
    ends
}

#[test]
fn format_1_chunks_still_open() {
    // Sealed whole, as lbsync did before blocks: 0x01 || nonce || XChaCha20-Poly1305(body).
    use chacha20poly1305::KeyInit as _;
    use chacha20poly1305::aead::{Aead, Payload};
    let key = [42u8; 32];
    let c = FolderKey::from_bytes(key).crypt();
    let sub = |ctx: &str| blake3::derive_key(&format!("lbsync 2026-12-02 {ctx}"), &key);
    for (flag, pt) in [(0u8, random_bytes(5000, 1)), (1, text_bytes(5000))] {
        let h = blake3::keyed_hash(&sub("chunk nonce"), &pt);
        let nonce = &h.as_bytes()[..24];
        let payload = if flag == 1 {
            zstd::bulk::compress(&pt, 1).unwrap()
        } else {
            pt.clone()
        };
        let body = [&[flag][..], &payload].concat();
        let ct = XChaCha20Poly1305::new((&sub("chunk aead")).into())
            .encrypt(
                chacha20poly1305::XNonce::from_slice(nonce),
                Payload {
                    msg: &body,
                    aad: CHUNK_AAD_V1,
                },
            )
            .unwrap();
        let sealed = [&[CHUNK_FORMAT_V1][..], nonce, &ct].concat();
        let id = ChunkId::of(&sealed);
        assert_eq!(c.open_chunk(&id, &sealed, 5000).unwrap(), pt);
        assert!(is_tampered(c.open_chunk(&id, &sealed, 4999)));
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert!(is_tampered(c.open_chunk(&ChunkId::of(&bad), &bad, 5000)));
    }
}

#[test]
fn a_validly_encrypted_format_1_body_with_a_nonce_not_its_own_is_tampered() {
    // A holder of the key could encrypt another body under some chunk's nonce; the nonce check
    // catches it (the nonce is a PRF of the plaintext).
    let c = crypt();
    let nonce = [7u8; 24];
    let mut buf = vec![CHUNK_FORMAT_V1];
    buf.extend_from_slice(&nonce);
    buf.extend_from_slice(&[0, b'h', b'i']);
    let tag = chacha20poly1305::aead::AeadInPlace::encrypt_in_place_detached(
        &c.0.chunk_aead,
        chacha20poly1305::XNonce::from_slice(&nonce),
        CHUNK_AAD_V1,
        &mut buf[25..],
    )
    .unwrap();
    buf.extend_from_slice(&tag);
    let err = c
        .open_chunk(&ChunkId::of(&buf), &buf, 100)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nonce"), "{err}");
}

// ---- manifests ----

#[test]
fn masked_manifest_id_differs_from_plain_and_decodes_back() {
    let c = crypt();
    let chunks: Vec<ChunkRef> = (0..10u32)
        .map(|i| {
            let s = c.seal_chunk(&text_bytes(1000 + i as usize));
            ChunkRef {
                id: s.id,
                len: 1000 + i,
            }
        })
        .collect();
    let plain = Manifest::new(chunks.clone());
    let masked = Manifest::new(chunks).masked(c.length_mask());
    assert_ne!(plain.id(), masked.id());
    assert_eq!(masked.size(), plain.size());
    let enc = masked.encode();
    assert!(
        Manifest::decode(&enc).is_ok(),
        "the server decodes it as any manifest"
    );
    assert_ne!(Manifest::decode(&enc).unwrap().size(), plain.size());
    assert_eq!(
        Manifest::decode_masked(&enc, &c.length_mask()).unwrap(),
        masked
    );
    assert_eq!(
        c.length_mask(),
        FolderKey::from_bytes([42; 32]).crypt().length_mask()
    );
    assert_ne!(
        c.length_mask(),
        FolderKey::from_bytes([1; 32]).crypt().length_mask()
    );
}

// ---- paths ----

fn p(s: &str) -> SyncPath {
    SyncPath::new(s).unwrap()
}

#[test]
fn paths_round_trip_and_hide_lengths() {
    let c = crypt();
    for s in [
        "a",
        "a/b/c",
        "Ünïcödé/ファイル.txt",
        ".hidden/.x",
        "x".repeat(200).as_str(),
    ] {
        let sealed = c.seal_path(&p(s)).unwrap();
        assert!(c.is_sealed_path(&sealed), "{sealed}");
        assert!(sealed_path_shape_ok(sealed.as_str()));
        assert!(
            !sealed_path_shape_ok(s),
            "a plain path is not of the sealed shape: {s}"
        );
        assert_eq!(sealed.as_str().split('/').count(), s.split('/').count());
        assert_eq!(c.open_path(&sealed).unwrap(), p(s));
        assert_eq!(c.seal_path(&p(s)).unwrap(), sealed, "deterministic");
    }
    // Names of 1 and 31 bytes pad to one block: equal lengths on the server; 32 takes two.
    let one = c.seal_path(&p("a")).unwrap();
    let thirty_one = c.seal_path(&p(&"b".repeat(31))).unwrap();
    let thirty_two = c.seal_path(&p(&"b".repeat(32))).unwrap();
    assert_eq!(one.as_str().len(), thirty_one.as_str().len());
    assert_eq!(one.as_str().len(), 64, "base64url of 16 + 32 bytes");
    assert!(thirty_two.as_str().len() > one.as_str().len());
}

#[test]
fn equal_names_under_different_parents_seal_differently() {
    let c = crypt();
    let a = c.seal_path(&p("a/x")).unwrap();
    let b = c.seal_path(&p("b/x")).unwrap();
    let (ax, bx) = (a.file_name(), b.file_name());
    assert_ne!(ax, bx, "the parent is associated data");
    // Moving a sealed name under another sealed parent does not open.
    let moved = p(&format!("{}/{}", b.as_str().split('/').next().unwrap(), ax));
    assert!(is_tampered(c.open_path(&moved)));
    // Top-level "x" differs from "a/x"'s last component too.
    assert_ne!(c.seal_path(&p("x")).unwrap().as_str(), ax);
}

#[test]
fn path_tamper_and_foreign_shapes_are_refused() {
    let c = crypt();
    let sealed = c.seal_path(&p("dir/file")).unwrap();
    let s = sealed.as_str();
    // Flip one character of each component to another base64url character.
    for i in 0..s.len() {
        if s.as_bytes()[i] == b'/' {
            continue;
        }
        let mut b = s.as_bytes().to_vec();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        let bad = p(std::str::from_utf8(&b).unwrap());
        assert!(is_tampered(c.open_path(&bad)), "char {i}");
    }
    for bad in ["plain", "a/b", "AAAA", &s[..s.len() - 1]] {
        assert!(is_tampered(c.open_path(&p(bad))), "{bad}");
        assert!(!sealed_path_shape_ok(bad), "{bad}");
    }
    assert!(!sealed_path_shape_ok(""));
    // Another folder's sealed path has the shape but does not open.
    let other = FolderKey::from_bytes([5; 32])
        .crypt()
        .seal_path(&p("dir/file"))
        .unwrap();
    assert!(sealed_path_shape_ok(other.as_str()));
    assert!(is_tampered(c.open_path(&other)));
}

#[test]
fn sealed_paths_never_start_with_a_dot_and_long_ones_are_refused() {
    let c = crypt();
    for i in 0..500 {
        let sealed = c.seal_path(&p(&format!(".d{i}/.f{i}"))).unwrap();
        for comp in sealed.as_str().split('/') {
            assert!(!comp.starts_with('.'), "{comp}");
            assert!(
                comp.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
        }
    }
    // A path that fits in the clear but not sealed: a clear error, not a truncation.
    let long = vec!["abcdefghij"; 200].join("/");
    assert!(long.len() <= 4096);
    match c.seal_path(&p(&long)) {
        Err(Error::PathTooLong { len }) => assert!(len > 4096),
        other => panic!("{other:?}"),
    }
    let msg = Error::PathTooLong { len: 5000 }.to_string();
    assert!(msg.contains("path too long for an encrypted folder") && msg.contains("shorten"));
}

proptest! {
    #[test]
    fn open_path_inverts_seal_path(
        parts in proptest::collection::vec("[^/\u{0}]{1,40}", 1..6),
    ) {
        let joined = parts.join("/");
        // Only paths SyncPath takes: no "." or ".." components, not under .lbsync.
        prop_assume!(SyncPath::new(joined.clone()).is_ok());
        let c = crypt();
        let path = SyncPath::new(joined).unwrap();
        let sealed = c.seal_path(&path).unwrap();
        prop_assert!(sealed_path_shape_ok(sealed.as_str()));
        prop_assert_eq!(c.open_path(&sealed).unwrap(), path);
    }
}

// ---- entries ----

fn file_entry() -> Entry {
    let mut e = Entry::new(p("docs/report.txt"), EntryKind::File, "laptop");
    e.size = 12345;
    e.mode = 0o755;
    e.mtime_ns = -1_234_567_890;
    e.manifest = Some(ManifestId::of(b"m"));
    e
}

#[test]
fn entries_round_trip_and_hide_metadata() {
    let c = crypt();
    let mut link = Entry::new(p("l"), EntryKind::Symlink, "d");
    link.symlink_target = Some("../target/of/link".into());
    let tomb = Entry::tombstone(p("gone/file"), EntryKind::File, "d");
    for e in [file_entry(), link, tomb, Entry::dir(p("dir"), "d")] {
        let s = c.seal_entry(&e, 7).unwrap();
        assert_eq!(
            (s.size, s.mode, s.mtime_ns, &s.symlink_target),
            (0, 0, 0, &None)
        );
        assert_eq!(
            (s.kind, s.deleted, s.manifest, s.version),
            (e.kind, e.deleted, e.manifest, 7)
        );
        assert_eq!(s.device, e.device);
        assert!(!s.sealed.is_empty() && s.sealed.len() <= lbsync_proto::convert::MAX_SEALED_BYTES);
        assert!(c.is_sealed_path(&s.path));
        let o = c.open_entry(&s).unwrap();
        assert_eq!(
            o,
            Entry {
                version: 7,
                ..e.clone()
            }
        );
        // Deterministic for one version of one path; another version seals otherwise.
        assert_eq!(c.seal_entry(&e, 7).unwrap().sealed, s.sealed);
        assert_ne!(c.seal_entry(&e, 8).unwrap().sealed, s.sealed);
        // Format 1, as sealed before, still opens to the same entry.
        let old = entry::seal_v1(&c.0.entry, s.path.clone(), &e, 7).unwrap();
        assert_eq!(old.sealed[0], ENTRY_FORMAT_V1);
        assert_eq!(c.open_entry(&old).unwrap(), o);
    }
}

#[test]
fn sealed_file_metadata_is_about_half_of_format_1() {
    let c = crypt();
    let mut e = file_entry();
    e.mtime_ns = 1_764_700_000_123_456_789;
    let s = c.seal_entry(&e, 3).unwrap();
    let old = entry::seal_v1(&c.0.entry, s.path.clone(), &e, 3).unwrap();
    assert_eq!(old.sealed.len(), 65);
    assert!(s.sealed.len() <= 33, "{} bytes", s.sealed.len());
}

proptest! {
    #[test]
    fn entry_metadata_round_trips_whatever_the_values(
        size in any::<u64>(),
        mode in any::<u32>(),
        mtime_ns in any::<i64>(),
        target in proptest::option::of("[a-z/.]{1,40}"),
    ) {
        let c = crypt();
        let mut e = Entry::new(p("x"), EntryKind::Symlink, "d");
        (e.size, e.mode, e.mtime_ns, e.symlink_target) = (size, mode, mtime_ns, target);
        let o = c.open_entry(&c.seal_entry(&e, 1).unwrap()).unwrap();
        prop_assert_eq!(o, Entry { version: 1, ..e });
    }
}

#[test]
fn every_entry_tamper_is_detected() {
    let c = crypt();
    let e = file_entry();
    let s = c.seal_entry(&e, 5).unwrap();
    let other = c
        .seal_entry(
            &Entry {
                path: p("docs/other.txt"),
                ..e.clone()
            },
            5,
        )
        .unwrap();
    let mut cases: Vec<(&str, Entry)> = vec![
        (
            "replayed as another version",
            Entry {
                version: 6,
                ..s.clone()
            },
        ),
        (
            "older version",
            Entry {
                version: 4,
                ..s.clone()
            },
        ),
        (
            "kind",
            Entry {
                kind: EntryKind::Dir,
                ..s.clone()
            },
        ),
        (
            "forged deletion",
            Entry {
                deleted: true,
                ..s.clone()
            },
        ),
        (
            "manifest swapped",
            Entry {
                manifest: Some(ManifestId::of(b"x")),
                ..s.clone()
            },
        ),
        (
            "manifest dropped",
            Entry {
                manifest: None,
                ..s.clone()
            },
        ),
        (
            "moved to another path",
            Entry {
                path: other.path.clone(),
                ..s.clone()
            },
        ),
        (
            "sealed blobs swapped",
            Entry {
                sealed: other.sealed.clone(),
                ..s.clone()
            },
        ),
        (
            "no sealed metadata",
            Entry {
                sealed: Vec::new(),
                ..s.clone()
            },
        ),
        (
            "truncated",
            Entry {
                sealed: s.sealed[..s.sealed.len() - 1].to_vec(),
                ..s.clone()
            },
        ),
        (
            "short",
            Entry {
                sealed: s.sealed[..20].to_vec(),
                ..s.clone()
            },
        ),
    ];
    for i in 0..s.sealed.len() {
        let mut b = s.sealed.clone();
        b[i] ^= 0x80;
        cases.push((
            "flipped byte",
            Entry {
                sealed: b,
                ..s.clone()
            },
        ));
    }
    for (what, bad) in cases {
        assert!(is_tampered(c.open_entry(&bad)), "{what}");
    }
    // The tombstone case: a deletion cannot be forged from a live entry, nor undone.
    let t = c
        .seal_entry(
            &Entry::tombstone(p("docs/report.txt"), EntryKind::File, "d"),
            9,
        )
        .unwrap();
    assert!(is_tampered(c.open_entry(&Entry {
        deleted: false,
        ..t
    })));
    // Visible fields the aad does not cover pass (device, seq, committed time are the server's).
    let moved_seq = Entry {
        seq: 99,
        committed_ns: 5,
        ..s.clone()
    };
    assert_eq!(c.open_entry(&moved_seq).unwrap().seq, 99);
    let err = c
        .open_entry(&Entry { version: 6, ..s })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("docs/report.txt") && err.contains("version 6"),
        "{err}"
    );
}

#[test]
fn overlong_symlink_targets_are_refused_when_sealing() {
    let c = crypt();
    let mut e = Entry::new(p("l"), EntryKind::Symlink, "d");
    e.symlink_target = Some("t".repeat(MAX_TARGET_BYTES));
    let s = c.seal_entry(&e, 1).unwrap();
    assert!(s.sealed.len() <= lbsync_proto::convert::MAX_SEALED_BYTES);
    assert_eq!(c.open_entry(&s).unwrap().symlink_target, e.symlink_target);
    e.symlink_target = Some("t".repeat(MAX_TARGET_BYTES + 1));
    assert!(matches!(c.seal_entry(&e, 1), Err(Error::BadInput(_))));
}

// ---- wrapping ----

#[test]
fn passphrase_wrap_round_trips_and_a_wrong_one_is_wrong_passphrase() {
    let k = FolderKey::generate();
    let w = wrap::wrap_with_passphrase_at(&k, "correct horse", Some(10)).unwrap();
    assert!(w.starts_with(b"age-encryption.org/v1\n"));
    assert_eq!(unwrap_with_passphrase(&w, "correct horse").unwrap(), k);
    assert!(matches!(
        unwrap_with_passphrase(&w, "wrong horse"),
        Err(Error::WrongPassphrase)
    ));
    assert!(matches!(
        unwrap_with_passphrase(&w, ""),
        Err(Error::WrongPassphrase)
    ));
    // Damage is not a wrong passphrase.
    assert!(matches!(
        unwrap_with_passphrase(b"not age", "x"),
        Err(Error::BadKeyFile { .. })
    ));
    let mut cut = w.clone();
    cut.truncate(w.len() - 5);
    assert!(matches!(
        unwrap_with_passphrase(&cut, "correct horse"),
        Err(Error::BadKeyFile { .. })
    ));
    // An empty passphrase is refused up front.
    assert!(matches!(
        wrap::wrap_with_passphrase_at(&k, "", Some(10)),
        Err(Error::BadInput(_))
    ));
    // A wrap asking for too much work (a hostile server's) is refused before doing it.
    let text = String::from_utf8_lossy(&w).into_owned();
    let stanza = text.lines().find(|l| l.starts_with("-> scrypt ")).unwrap();
    assert!(stanza.ends_with(" 10"), "{stanza}");
    let heavy = text.replacen(stanza, &format!("{} 23", &stanza[..stanza.len() - 3]), 1);
    let t = std::time::Instant::now();
    match unwrap_with_passphrase(heavy.as_bytes(), "correct horse") {
        Err(Error::BadKeyFile { why }) => assert!(why.contains("work factor 23"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn work_factor_from_env_is_honoured_only_in_range() {
    assert_eq!(wrap::log_n_from(Some("10")), Some(10));
    assert_eq!(wrap::log_n_from(Some(" 22 ")), Some(22));
    for bad in ["9", "23", "0", "x", ""] {
        assert_eq!(wrap::log_n_from(Some(bad)), None, "{bad}");
    }
    assert_eq!(wrap::log_n_from(None), None);
    assert_eq!(SCRYPT_LOG_N_ENV, "LBSYNC_SCRYPT_LOG_N");
}

#[test]
fn recipient_wrap_round_trips_and_another_identity_is_not_this_folder() {
    let k = FolderKey::generate();
    let id = Identity::generate();
    let r = id.recipient();
    assert!(r.starts_with("age1"));
    let w = wrap_to_recipient(&k, &r).unwrap();
    assert_eq!(unwrap_with_identity(&w, &id).unwrap(), k);
    assert!(matches!(
        unwrap_with_identity(&w, &Identity::generate()),
        Err(Error::NotThisFolder)
    ));
    // A passphrase wrap is not for an identity either, and vice versa.
    let pw = wrap::wrap_with_passphrase_at(&k, "p", Some(10)).unwrap();
    assert!(matches!(
        unwrap_with_identity(&pw, &id),
        Err(Error::NotThisFolder)
    ));
    assert!(matches!(
        unwrap_with_passphrase(&w, "p"),
        Err(Error::BadKeyFile { .. })
    ));
    assert!(matches!(
        wrap_to_recipient(&k, "age1nope"),
        Err(Error::BadInput(_))
    ));
}

#[test]
fn identity_file_round_trips() {
    let id = Identity::generate();
    let text = id.to_file_text();
    assert!(text.starts_with("# public key: age1"));
    assert!(text.contains("AGE-SECRET-KEY-1"));
    let back = Identity::from_file_text(&text).unwrap();
    assert_eq!(back.recipient(), id.recipient());
    let with_comments = format!("# created: 2026-12-02T00:00:00Z\n\n{text}");
    assert_eq!(
        Identity::from_file_text(&with_comments)
            .unwrap()
            .recipient(),
        id.recipient()
    );
    assert!(!format!("{id:?}").contains("AGE-SECRET"));
    for bad in ["", "# only a comment\n", "AGE-SECRET-KEY-1NOPE\n"] {
        assert!(
            matches!(Identity::from_file_text(bad), Err(Error::BadKeyFile { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn folder_crypt_is_send_sync_and_debug_shows_no_secret() {
    fn send_sync<T: Send + Sync + Clone>() {}
    send_sync::<FolderCrypt>();
    let k = FolderKey::from_bytes([42; 32]);
    let c = k.crypt();
    assert_eq!(c.fingerprint(), k.fingerprint());
    assert_eq!(
        format!("{c:?}"),
        format!("FolderCrypt({})", k.fingerprint())
    );
}

// ---- measurement ----

/// `cargo test -p lbsync-crypt --release -- --ignored --nocapture seal_throughput`
#[test]
#[ignore = "a measurement: run on its own, in release"]
#[allow(clippy::print_stdout)]
fn seal_throughput() {
    let total: usize = std::env::var("SEAL_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
        << 20;
    let c = crypt();
    for (name, data) in [
        ("random", random_bytes(total, 9)),
        ("text", text_bytes(total)),
    ] {
        let mut cutter =
            lbsync_chunkstore::Cutter::new(&data[..], lbsync_chunkstore::ChunkParams::LBFS);
        let mut chunks = Vec::new();
        while let Some(block) = cutter.next_block().unwrap() {
            chunks.extend(block);
        }
        let t = std::time::Instant::now();
        let mut stored = 0usize;
        for ch in &chunks {
            stored += c.seal_chunk(&ch.data).bytes.len();
        }
        let secs = t.elapsed().as_secs_f64();
        let mb_s = |t: std::time::Instant| total as f64 / t.elapsed().as_secs_f64() / 1e6;
        let t = std::time::Instant::now();
        for ch in &chunks {
            std::hint::black_box(blake3::hash(&ch.data));
        }
        let hash = mb_s(t);
        let t = std::time::Instant::now();
        let mut zstd_hits = 0;
        for ch in &chunks {
            zstd_hits += chunk::blocks(&ch.data)
                .filter(|b| chunk::compressed(b).is_some())
                .count();
        }
        let decide = mb_s(t);
        let t = std::time::Instant::now();
        for ch in &chunks {
            let mut b = ch.data.to_vec();
            for piece in b.chunks_mut(BLOCK_AVG) {
                std::hint::black_box(
                    aes_gcm_siv::aead::AeadInPlace::encrypt_in_place_detached(
                        &c.0.chunk_block,
                        &[0u8; 12].into(),
                        CHUNK_AAD,
                        piece,
                    )
                    .unwrap(),
                );
            }
        }
        let aead = mb_s(t);
        println!(
            "{name}: parts: one blake3 pass {hash:.0} MB/s, compression decision {decide:.0} MB/s \
             ({zstd_hits} blocks of {} chunks compressed), AES-GCM-SIV {aead:.0} MB/s",
            chunks.len()
        );
        let t = std::time::Instant::now();
        std::thread::scope(|s| {
            for half in chunks.chunks(chunks.len().div_ceil(2)) {
                let c = c.clone();
                s.spawn(move || {
                    for ch in half {
                        std::hint::black_box(c.seal_chunk(&ch.data));
                    }
                });
            }
        });
        println!("{name}: seal on two threads {:.0} MB/s", mb_s(t));
        let t = std::time::Instant::now();
        for ch in chunks.iter().take(chunks.len() / 8) {
            let s = c.seal_chunk(&ch.data);
            c.open_chunk(&s.id, &s.bytes, ch.data.len()).unwrap();
        }
        let round = t.elapsed().as_secs_f64();
        println!(
            "{name}: {} chunks, seal {:.0} MB/s, stored {:.3} of plaintext; seal+open of 1/8: {:.0} MB/s",
            chunks.len(),
            total as f64 / secs / 1e6,
            stored as f64 / total as f64,
            total as f64 / 8.0 / round / 1e6,
        );
    }
}

// ---- the formats, recomputed from the design with the primitives alone ----

#[test]
fn formats_follow_the_design_byte_for_byte() {
    use aes_siv::KeyInit as _;
    use base64::Engine as _;
    use chacha20poly1305::aead::{Aead, Payload};

    let key = [42u8; 32];
    let c = FolderKey::from_bytes(key).crypt();
    let sub = |ctx: &str| blake3::derive_key(&format!("lbsync 2026-12-02 {ctx}"), &key);

    // Chunk: 0x02, then per FastCDC block (level 0, 64/512/2048) uleb128(len << 1 | z) || tag || ct,
    // AES-256-GCM-SIV(block key, nonce 0, ad = "lbsync chunk v2" || [z], body);
    // id = blake3(sealed).
    let gcm =
        <aes_gcm_siv::Aes256GcmSiv as aes_gcm_siv::KeyInit>::new((&sub("chunk block")).into());
    let text = text_bytes(3000);
    for pt in [
        &b"a chunk too short to compress"[..],
        &random_bytes(5000, 2),
        &text,
    ] {
        let mut want = vec![2u8];
        let cuts = fastcdc::v2020::FastCDC::with_level(
            pt,
            64,
            512,
            2048,
            fastcdc::v2020::Normalization::Level0,
        );
        for cut in cuts {
            let b = &pt[cut.offset..cut.offset + cut.length];
            let z = zstd::bulk::compress(b, 1)
                .ok()
                .filter(|z| z.len() < b.len() - b.len() / 32 && chunk::compressed(b).is_some());
            let flag = u8::from(z.is_some());
            let body = z.unwrap_or_else(|| b.to_vec());
            let v = (body.len() << 1) | usize::from(flag);
            if v < 0x80 {
                want.push(v as u8);
            } else {
                want.extend_from_slice(&[(v as u8) | 0x80, (v >> 7) as u8]);
            }
            let mut ct = body.clone();
            let tag = aes_gcm_siv::aead::AeadInPlace::encrypt_in_place_detached(
                &gcm,
                &[0u8; 12].into(),
                &[&b"lbsync chunk v2"[..], &[flag][..]].concat(),
                &mut ct,
            )
            .unwrap();
            want.extend_from_slice(&tag);
            want.extend_from_slice(&ct);
        }
        let got = c.seal_chunk(pt);
        assert_eq!(got.bytes.as_ref(), want.as_slice());
        assert_eq!(got.id, ChunkId::of(&want));
    }
    assert!(
        c.seal_chunk(&text).bytes.len() < text.len(),
        "the text blocks were compressed"
    );

    // Length mask: the "length mask" subkey.
    assert_eq!(c.length_mask(), LengthMask::new(sub("length mask")));

    // Path: AES-256-SIV with key siv1 || siv2, ad = plaintext parent, name padded to 32.
    let mut k64 = [0u8; 64];
    k64[..32].copy_from_slice(&sub("path siv 1"));
    k64[32..].copy_from_slice(&sub("path siv 2"));
    let seal_name = |parent: &[u8], name: &[u8]| {
        let mut padded = name.to_vec();
        padded.push(0x80);
        padded.resize(32, 0);
        let raw = aes_siv::siv::Aes256Siv::new((&k64).into())
            .encrypt([parent], &padded)
            .unwrap();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    };
    let sealed = c.seal_path(&p("dir/file")).unwrap();
    assert_eq!(
        sealed.as_str(),
        format!("{}/{}", seal_name(b"", b"dir"), seal_name(b"dir", b"file"))
    );

    // Entry: 0x02 || tag || AES-256-GCM-SIV(entry siv key, nonce 0, meta, aad), meta as
    // ULEB128s (the mtime zigzagged) and the target.
    let mut e = Entry::new(p("dir/file"), EntryKind::Symlink, "d");
    e.size = 0x0102;
    e.mode = 0o644;
    e.mtime_ns = -5;
    e.symlink_target = Some("tgt".into());
    e.manifest = Some(ManifestId::of(b"m"));
    let s = c.seal_entry(&e, 9).unwrap();
    assert_eq!(s.sealed[0], 2);
    let mut aad = b"lbsync entry v2".to_vec();
    aad.extend_from_slice(&8u32.to_le_bytes());
    aad.extend_from_slice(b"dir/file");
    aad.extend_from_slice(&9u64.to_le_bytes());
    aad.push(2); // symlink
    aad.push(0);
    aad.extend_from_slice(ManifestId::of(b"m").as_bytes());
    let siv_key = blake3::derive_key("lbsync 2026-12-03 entry siv", &key);
    let mut meta = s.sealed[17..].to_vec();
    {
        use aes_gcm_siv::aead::AeadInPlace as _;
        <aes_gcm_siv::Aes256GcmSiv as aes_gcm_siv::KeyInit>::new((&siv_key).into())
            .decrypt_in_place_detached((&[0u8; 12]).into(), &aad, &mut meta, s.sealed[1..17].into())
            .unwrap();
    }
    // 0x0102 = 258: 0x82 0x02; 0o644 = 420: 0xa4 0x03; zigzag(-5) = 9; target length 3.
    assert_eq!(meta, [0x82, 0x02, 0xa4, 0x03, 9, 3, b't', b'g', b't']);

    // Format 1: 0x01 || nonce || XChaCha20-Poly1305(meta, aad) with the entry aead subkey.
    let s = entry::seal_v1(&c.0.entry, s.path.clone(), &e, 9).unwrap();
    assert_eq!(s.sealed[0], 1);
    aad[..15].copy_from_slice(b"lbsync entry v1");
    let meta = XChaCha20Poly1305::new((&sub("entry aead")).into())
        .decrypt(
            chacha20poly1305::XNonce::from_slice(&s.sealed[1..25]),
            Payload {
                msg: &s.sealed[25..],
                aad: &aad,
            },
        )
        .unwrap();
    let mut want = Vec::new();
    want.extend_from_slice(&0x0102u64.to_le_bytes());
    want.extend_from_slice(&0o644u32.to_le_bytes());
    want.extend_from_slice(&(-5i64).to_le_bytes());
    want.extend_from_slice(&3u32.to_le_bytes());
    want.extend_from_slice(b"tgt");
    assert_eq!(meta, want);

    // Fingerprint: the first 10 bytes of the fingerprint subkey.
    assert_eq!(
        c.fingerprint().replace('-', ""),
        key::to_hex(&sub("fingerprint")[..10])
    );

    // Golden values: a change here is a format change (every encrypted folder's ids change).
    assert_eq!(
        FolderKey::from_bytes(key).fingerprint(),
        GOLDEN_FINGERPRINT,
        "fingerprint of [42; 32]"
    );
    assert_eq!(c.seal_chunk(b"hello").id.to_string(), GOLDEN_HELLO_ID);
    assert_eq!(c.seal_path(&p("a")).unwrap().as_str(), GOLDEN_PATH_A);
}

const GOLDEN_FINGERPRINT: &str = "b322-a473-337a-b2b2-5b1e";
const GOLDEN_HELLO_ID: &str = "1891cfbaf27ab98e33674a3530b5cac2fc1237aa88439a118174bd7743b5d18c";
const GOLDEN_PATH_A: &str = "u2Ti27ZkbDKUuRym-qWzKkNYulDpzvjB36wD7ain8jWN0pax76rZVf53XBWC6Y8J";
