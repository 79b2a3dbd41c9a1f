//! A hostile server (the [`HostileProxy`] in front of a real one) that flips a byte of a chunk,
//! swaps two chunks, swaps two paths' entries, replays an older version as newer, rolls a path
//! back to an older version, or moves one entry's sealed metadata to another: device B, which
//! synced honestly before, syncs through it. Each time B reports the tampering, writes no wrong byte and deletes nothing; and a sync
//! through the honest server afterwards brings B up to date.
//!
//! A plain folder has no defence against the entry attacks (the server is trusted with names
//! and versions there), but its BLAKE3 ids catch the chunk attacks: those run on both kinds,
//! which also shows the proxy's tampering is real.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::collections::BTreeMap;

use crate::encryption::{Pair, status_json, sync_bin, sync_ok};
use crate::hostile_proxy::{HostileProxy, Tamper};
use crate::util::*;

/// Whether the client's words say what happened: the server's data is not authentic.
fn names_tampering(t: &str) -> bool {
    let t = t.to_lowercase();
    [
        "tamper",
        "not this folder",
        "do not match",
        "does not match",
        "mismatch",
        "not authentic",
        "authenticat",
        "malformed",
    ]
    .iter()
    .any(|w| t.contains(w))
}

/// The files of a tree, by path: their bytes' hash.
fn files(t: &BTreeMap<String, Node>) -> BTreeMap<&str, &str> {
    t.iter()
        .filter_map(|(p, n)| match n {
            Node::File { hash, .. } => Some((p.as_str(), hash.as_str())),
            _ => None,
        })
        .collect()
}

async fn attack(mode: Tamper, encrypted: bool) {
    attack_with(mode, encrypted, false).await;
}

/// [`attack`]; with `sources`, each round also writes 40 new small source files (new: no delta
/// bases), whose chunks a
/// download gets compressed together in one frame. Returns how many answers had chunks swapped
/// inside such a frame.
async fn attack_with(mode: Tamper, encrypted: bool, sources: bool) -> usize {
    let server = Server::start().await;
    let pair = Pair::new(&server.url, "f", encrypted).await;
    let (a, b) = (pair.a(), pair.b());
    // Several files, so that one Changes message carries several entries and one GetChunks
    // answer several chunks.
    write(a, "one.txt", "one, first version");
    write(a, "two.txt", "two, first version");
    write(a, "docs/three.txt", "three, first version");
    write(a, "big.bin", seeded(3 << 20, 1));
    write(a, "keep.txt", "never changes");
    sync_ok(a, &server.url, "alice").await;
    sync_ok(b, &server.url, "bob").await;
    assert_eq!(tree(b), tree(a), "b did not get a's files");

    // Two rounds of edits, the first synced honestly: the server keeps three versions of the
    // edited files, and b holds the second.
    for round in [2, 3] {
        if round == 3 {
            sync_ok(b, &server.url, "bob").await;
        }
        write(
            a,
            "one.txt",
            format!("one, version {round}: longer than the first"),
        );
        write(a, "two.txt", format!("two, version {round}"));
        write(a, "docs/three.txt", format!("three, version {round}"));
        write(a, "big.bin", seeded(3 << 20, round));
        write(a, &format!("new{round}.bin"), seeded(2 << 20, 10 + round));
        if sources {
            for i in 0..40 {
                let body = format!("import os\n\ndef f{i}_{round}():\n    return {i}\n");
                write(a, &format!("src/r{round}/m{i}.py"), body.repeat(10));
            }
        }
        sync_ok(a, &server.url, "alice").await;
    }
    let before = tree(b);
    let wanted = tree(a);
    assert_ne!(before, wanted);

    let proxy = HostileProxy::start(&server.url, mode).await;
    let out = sync_bin(b, &proxy.url, "bob").await;
    let said = text(&out);
    eprintln!("{mode:?} (encrypted: {encrypted}): b said: {said}");
    assert!(
        proxy.tampered() > 0,
        "{mode:?}: the proxy found nothing to tamper with: {said}"
    );
    let status = status_json(b).await;
    let problems = !status["pending"].as_array().is_none_or(Vec::is_empty)
        || !status["waiting"].as_array().is_none_or(Vec::is_empty);
    assert!(
        !out.status.success() || problems,
        "{mode:?}: b took the tampered answers silently: {said}\nstatus: {status}"
    );
    assert!(
        names_tampering(&said),
        "{mode:?}: b's report does not say what is wrong: {said}"
    );

    // Nothing wrong written: every file holds what b had or what a wrote, at its own path;
    // nothing deleted.
    let after = tree(b);
    let (old, new, now) = (files(&before), files(&wanted), files(&after));
    let wrong: Vec<String> = now
        .iter()
        .filter(|(path, hash)| old.get(*path) != Some(*hash) && new.get(*path) != Some(*hash))
        .map(|(path, hash)| {
            let had = |t: &BTreeMap<&str, &str>| {
                t.iter()
                    .filter(|(_, h)| *h == hash)
                    .map(|(p, _)| p.to_string())
                    .collect::<Vec<_>>()
            };
            format!(
                "{path} (bytes b had at {:?}, a wrote at {:?})",
                had(&old),
                had(&new)
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{mode:?}: b wrote bytes to paths that neither a nor b had there: {wrong:?}\n{said}"
    );
    for path in before.keys() {
        assert!(after.contains_key(path), "{mode:?}: b lost {path}: {said}");
    }
    let frames = proxy.frames_tampered();
    drop(proxy);

    // The honest server brings b up to date: nothing was poisoned.
    sync_ok(b, &server.url, "bob").await;
    assert_eq!(tree(b), wanted, "{mode:?}: b did not recover");
    server.stop().await;
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_flipped_chunk_byte_is_caught() {
    attack(Tamper::FlipChunkByte, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_swapped_chunks_are_caught() {
    attack(Tamper::SwapChunks, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_swapped_paths_are_caught() {
    attack(Tamper::SwapPaths, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_replayed_old_version_is_caught() {
    attack(Tamper::Replay, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_rollback_to_an_older_version_is_caught() {
    attack(Tamper::Rollback, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_swapped_sealed_metadata_is_caught() {
    attack(Tamper::SwapSealed, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_flipped_chunk_byte_is_caught() {
    attack(Tamper::FlipChunkByte, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_swapped_chunks_are_caught() {
    attack(Tamper::SwapChunks, false).await;
}

/// Small files' chunks come compressed together, without ids: the client names each by the id
/// it asked at that place, so two chunks swapped inside the frame are caught as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_chunks_swapped_inside_a_together_frame_are_caught() {
    let frames = attack_with(Tamper::SwapChunks, false, true).await;
    assert!(frames > 0, "no download answer came in a together frame");
}

/// The proxy in pass-through mode is an honest server: a sync through it works. This guards
/// the forwarding itself (tokens, streams, sizes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_proxy_forwards_a_whole_sync() {
    let server = Server::start().await;
    let proxy = HostileProxy::start(&server.url, Tamper::None).await;
    let pair = Pair::new(&proxy.url, "f", false).await;
    write(pair.a(), "x.txt", "x");
    write(pair.a(), "big.bin", seeded(3 << 20, 5));
    sync_ok(pair.a(), &proxy.url, "alice").await;
    sync_ok(pair.b(), &proxy.url, "bob").await;
    assert_eq!(tree(pair.a()), tree(pair.b()));
    assert_eq!(proxy.tampered(), 0);
    server.stop().await;
}
