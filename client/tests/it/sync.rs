//! Two-way sync through the real gRPC server, in process.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_converge_through_every_kind_of_change() {
    let server = Server::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    write(a, "docs/notes.txt", "hello");
    write(a, "src/main.rs", "fn main() {}");
    write(a, "run.sh", "#!/bin/sh\necho hi\n");
    fs::set_permissions(a.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir_all(a.join("empty/nested")).unwrap();
    std::os::unix::fs::symlink("../outside/target", a.join("docs/link")).unwrap();
    write(a, "big.bin", seeded(3 << 20, 1));
    converge(&[a, b], &server).await;
    assert_eq!(tree(a), tree(b));
    assert_eq!(
        tree(b)["run.sh"],
        Node::File {
            hash: blake3::hash(b"#!/bin/sh\necho hi\n").to_hex().to_string(),
            exec: true
        }
    );

    // Edits on B, deletes and renames on A.
    write(b, "docs/notes.txt", "hello, edited on b");
    write(b, "new/deep/file.txt", "new");
    fs::remove_file(a.join("src/main.rs")).unwrap();
    fs::remove_dir(a.join("src")).unwrap();
    fs::rename(a.join("big.bin"), a.join("moved.bin")).unwrap();
    fs::remove_dir(a.join("empty/nested")).unwrap();
    fs::set_permissions(a.join("run.sh"), fs::Permissions::from_mode(0o644)).unwrap();
    converge(&[a, b], &server).await;
    assert_eq!(tree(a), tree(b));
    let t = tree(a);
    assert!(
        !t.contains_key("src") && !t.contains_key("big.bin") && !t.contains_key("empty/nested")
    );
    assert!(t.contains_key("moved.bin") && t.contains_key("new/deep/file.txt"));
    assert_eq!(
        fs::read_to_string(a.join("docs/notes.txt")).unwrap(),
        "hello, edited on b"
    );
    assert!(matches!(t["run.sh"], Node::File { exec: false, .. }));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_keep_both_versions_as_one_conflicted_copy() {
    let server = Server::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    write(a, "plan.txt", "v0");
    converge(&[a, b], &server).await;
    write(a, "plan.txt", "edited on A");
    write(b, "plan.txt", "edited on B");
    sync(a, &server, "alpha").await;
    let rb = sync(b, &server, "beta").await;
    assert_eq!(rb.conflicts, 1);
    converge(&[a, b], &server).await;
    assert_eq!(tree(a), tree(b));
    let copies: Vec<String> = tree(a)
        .into_keys()
        .filter(|p| p.contains("conflicted copy"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(
        copies[0].starts_with("plan (conflicted copy beta "),
        "{copies:?}"
    );
    assert_eq!(
        fs::read_to_string(a.join("plan.txt")).unwrap(),
        "edited on A"
    );
    assert_eq!(
        fs::read_to_string(a.join(&copies[0])).unwrap(),
        "edited on B"
    );

    // Equal edits on both sides are no conflict.
    write(a, "plan.txt", "same");
    write(b, "plan.txt", "same");
    sync(a, &server, "alpha").await;
    assert_eq!(sync(b, &server, "beta").await.conflicts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_beats_a_delete_either_way_round() {
    let server = Server::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    write(a, "one.txt", "1");
    write(a, "two.txt", "2");
    converge(&[a, b], &server).await;
    // The delete reaches the server first.
    fs::remove_file(a.join("one.txt")).unwrap();
    write(b, "one.txt", "1, edited");
    sync(a, &server, "a").await;
    sync(b, &server, "b").await;
    // The edit reaches the server first.
    write(b, "two.txt", "2, edited");
    fs::remove_file(a.join("two.txt")).unwrap();
    sync(b, &server, "b").await;
    sync(a, &server, "a").await;
    converge(&[a, b], &server).await;
    assert_eq!(tree(a), tree(b));
    assert_eq!(fs::read_to_string(a.join("one.txt")).unwrap(), "1, edited");
    assert_eq!(fs::read_to_string(a.join("two.txt")).unwrap(), "2, edited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_insert_in_100_mib_costs_a_few_kb_and_a_rename_costs_no_chunk() {
    let server = Server::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    let mut data = seeded(100 << 20, 7);
    write(a, "video.raw", &data);
    converge(&[a, b], &server).await;

    data.insert(50 << 20, b'!');
    write(a, "video.raw", &data);
    let up = sync(a, &server, "a").await;
    eprintln!("1-byte insert in 100 MiB, upload: {up:?}");
    let total = up.bytes_sent + up.bytes_received;
    assert!(total < 20_000, "1-byte insert cost {total} bytes: {up:?}");
    assert!(up.chunks_sent <= 3, "{up:?}");
    let down = sync(b, &server, "b").await;
    eprintln!("1-byte insert in 100 MiB, download: {down:?}");
    assert!(down.chunks_received <= 3, "{down:?}");
    assert!(down.bytes_sent + down.bytes_received < 20_000, "{down:?}");
    assert_eq!(fs::read(b.join("video.raw")).unwrap(), data);

    fs::rename(a.join("video.raw"), a.join("renamed.raw")).unwrap();
    let up = sync(a, &server, "a").await;
    assert_eq!(up.chunks_sent, 0, "{up:?}");
    assert!(
        up.bytes_sent + up.bytes_received < 2_000,
        "rename cost {up:?}"
    );
    let down = sync(b, &server, "b").await;
    assert_eq!(down.chunks_received, 0, "{down:?}");
    assert!(
        down.bytes_sent + down.bytes_received < 2_000,
        "rename cost {down:?}"
    );
    assert_eq!(tree(a), tree(b));
}

/// A large file's edited chunk has no cached base here: it goes as a block delta against the
/// server's copy of the chunk it replaced (GetSignatures), about one block instead of the chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_byte_insert_in_a_large_file_goes_as_a_block_delta_and_syncs_exactly() {
    let server = Server::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    let mut data = seeded(6 << 20, 11);
    write(a, "disk.img", &data);
    converge(&[a, b], &server).await;

    for at in [3 << 20, 0, data.len()] {
        data.insert(at, b'!');
        write(a, "disk.img", &data);
        let up = sync(a, &server, "a").await;
        eprintln!("1-byte insert at {at} of 6 MiB, upload: {up:?}");
        // An 8 KiB chunk whole would be over 8,000 bytes on its own.
        assert!(up.bytes_sent < 2_500, "insert at {at}: {up:?}");
        let down = sync(b, &server, "b").await;
        assert_eq!(
            fs::read(b.join("disk.img")).unwrap(),
            data,
            "insert at {at}"
        );
        assert!(down.chunks_received <= 3, "{down:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_files_never_reach_the_server() {
    let server = Server::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    write(a, ".lbsyncignore", "*.secret\ncache/\n");
    write(a, "keys.secret", "hunter2");
    write(a, "cache/blob", "x");
    write(a, "ok.txt", "fine");
    converge(&[a, b], &server).await;
    let t = tree(b);
    assert!(t.contains_key("ok.txt") && t.contains_key(".lbsyncignore"));
    assert!(
        !t.contains_key("keys.secret") && !t.contains_key("cache"),
        "{t:?}"
    );
    let opts = lbsync_client::SyncOptions {
        server: Some(server.url.clone()),
        ..Default::default()
    };
    let mut s = lbsync_client::Syncer::open(a, &opts).await.unwrap();
    let history = s
        .remote
        .history(&lbsync_proto::SyncPath::new("keys.secret").unwrap())
        .await
        .unwrap();
    assert!(history.is_empty());
}

/// A file that is mostly one chunk repeated (zeros: a disk image, a preallocated file) sends that
/// chunk once, however many times it occurs before the server has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_zeros_uploads_its_chunk_once() {
    let server = Server::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut data = vec![0u8; 100 << 20];
    data[50 << 20..(50 << 20) + 5].copy_from_slice(b"hello");
    write(a.path(), "disk.img", &data);
    let r = sync(a.path(), &server, "a").await;
    assert!(r.in_sync(), "{r:?}");
    assert!(
        r.chunks_sent <= 4,
        "one zero chunk, and the few around the text: {r:?}"
    );
    sync(b.path(), &server, "b").await;
    assert_eq!(std::fs::read(b.path().join("disk.img")).unwrap(), data);
}

/// A download that landed but whose state was never saved (the client was killed in between)
/// leaves a file the state does not know. When the server has moved on, that old server version
/// is replaced, not kept as a conflicted copy: nobody edited it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrecorded_download_is_replaced_not_kept_as_a_conflict() {
    let server = Server::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    write(a, "doc.txt", "version 1");
    sync(a, &server, "a").await;
    sync(b, &server, "b").await;
    // b forgets it ever synced doc.txt, as if killed right after the download's rename.
    edit_state(b, |st| {
        st.files.remove("doc.txt");
        st.cursor = 0;
    });
    write(a, "doc.txt", "version 2");
    sync(a, &server, "a").await;
    let r = sync(b, &server, "b").await;
    assert_eq!(r.conflicts, 0, "{r:?}");
    assert_eq!(
        std::fs::read_to_string(b.join("doc.txt")).unwrap(),
        "version 2"
    );
    converge(&[a, b], &server).await;
    assert_eq!(tree(a), tree(b));
}

/// A commit whose answer was lost (the server committed, then the connection broke) leaves a
/// server version this client made but never recorded. Deleting the file afterwards must delete
/// it on the server, not bring it back as someone's new file; editing it must upload the edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_was_lost_is_recognised_as_ours() {
    let server = Server::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    write(a, "gone.txt", "deleted after a lost answer");
    write(a, "kept.txt", "version 1");
    sync(a, &server, "a").await;
    sync(b, &server, "b").await;
    // a's state as if both commits' answers had never arrived: not recorded, in doubt.
    edit_state(a, |st| {
        st.files.remove("gone.txt");
        st.files.remove("kept.txt");
        st.cursor = 0;
        st.in_doubt = ["gone.txt".into(), "kept.txt".into()].into();
    });
    fs::remove_file(a.join("gone.txt")).unwrap();
    write(a, "kept.txt", "version 2, written after the lost answer");
    let r = sync(a, &server, "a").await;
    assert_eq!(r.conflicts, 0, "{r:?}");
    assert!(!a.join("gone.txt").exists(), "the deleted file came back");
    sync(b, &server, "b").await;
    assert!(!b.join("gone.txt").exists(), "the deletion did not reach b");
    assert_eq!(
        fs::read_to_string(b.join("kept.txt")).unwrap(),
        "version 2, written after the lost answer"
    );
    converge(&[a, b], &server).await;
    assert_eq!(tree(a), tree(b));
}

/// Rewrites `dir`'s client state with `edit`, as a crash or a lost answer would have left it.
fn edit_state(dir: &std::path::Path, edit: impl FnOnce(&mut lbsync_client::state::State)) {
    let mut store = lbsync_client::state::StateStore::load(dir).expect("load the state");
    edit(&mut store.state);
    store.save().expect("save the state");
}

/// A generated text file of about `lines` lines, different for each seed.
fn text(lines: usize, seed: u64) -> String {
    use rand::{Rng, SeedableRng};
    const WORDS: &[&str] = &[
        "let", "mut", "match", "fn", "return", "chunk", "store", "path", "sync", "{", "}", ";",
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..lines)
        .map(|_| {
            let n = rng.random_range(3..10);
            let words: Vec<&str> = (0..n)
                .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                .collect();
            words.join(" ") + "\n"
        })
        .collect()
}

/// Edited small files go as deltas against the versions they replaced, both ways, all in a few
/// calls; without the cache they still sync, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_of_small_files_travel_as_deltas_both_ways() {
    let server = Server::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    for i in 0..30 {
        write(a, &format!("src/f{i}.rs"), text(200, i));
    }
    converge(&[a, b], &server).await;

    let mut whole = 0;
    for i in 0..10 {
        let path = a.join(format!("src/f{i}.rs"));
        let mut t = fs::read_to_string(&path).unwrap();
        t.insert_str(t.len() / 2, "    // fixed\n");
        whole += t.len();
        fs::write(&path, t).unwrap();
    }
    for i in 27..30 {
        fs::remove_file(a.join(format!("src/f{i}.rs"))).unwrap();
    }
    let up = sync(a, &server, "a").await;
    assert_eq!((up.uploaded, up.deleted_there), (10, 3), "{up:?}");
    let total = up.bytes_sent + up.bytes_received;
    assert!(
        total < 6_000,
        "10 one-line edits and 3 deletions cost {total} bytes (the files are {whole}): {up:?}"
    );
    let down = sync(b, &server, "b").await;
    assert_eq!(down.chunks_received, 10, "{down:?}");
    assert!(
        down.bytes_received < 6_000,
        "10 one-line edits cost {} bytes down: {down:?}",
        down.bytes_received
    );
    assert_eq!(tree(a), tree(b));

    // Without the cache, an edit goes whole, and arrives all the same.
    for f in ["cache.db", "cache.db-wal", "cache.db-shm"] {
        let _ = fs::remove_file(a.join(".lbsync").join(f));
    }
    let path = a.join("src/f0.rs");
    let mut t = fs::read_to_string(&path).unwrap();
    t.push_str("// appended\n");
    fs::write(&path, &t).unwrap();
    converge(&[a, b], &server).await;
    assert_eq!(fs::read_to_string(b.join("src/f0.rs")).unwrap(), t);
    server.stop().await;
}

/// A server whose store was replaced lacks the chunks deltas would be made against: an edit
/// still arrives, sent whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_server_store_gets_edits_whole() {
    let old = Server::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    write(a, "notes.txt", text(150, 1));
    sync(a, &old, "a").await;
    old.stop().await;

    let server = Server::start().await;
    let mut t = fs::read_to_string(a.join("notes.txt")).unwrap();
    t.insert_str(100, "an edit\n");
    write(a, "notes.txt", &t);
    converge(&[a, b], &server).await;
    assert_eq!(fs::read_to_string(b.join("notes.txt")).unwrap(), t);
    server.stop().await;
}

/// A file written here at the path of a new file the server is sending, after the sync planned
/// the download and before its group was put in place (the proxy writes it when the client asks
/// for the group's manifests, so it is in no scan): both survive, the one written here as a
/// conflicted copy, and the folders converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_where_a_grouped_download_lands_is_kept() {
    use crate::hostile_proxy::{Hook, HostileProxy};
    use lbsync_client::{SyncOptions, Syncer};
    let server = Server::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    for i in 0..20 {
        write(a, &format!("n{i}.txt"), format!("from a {i}\n"));
    }
    sync(a, &server, "a").await;

    let target = b.join("n7.txt");
    let hook: Hook = std::sync::Arc::new(move || {
        if !target.exists() {
            fs::write(&target, "written on b meanwhile\n").unwrap();
        }
    });
    let proxy = HostileProxy::start_with_hook(&server.url, hook).await;
    let opts = SyncOptions {
        server: Some(proxy.url.clone()),
        device: Some("b".into()),
        ..SyncOptions::default()
    };
    Syncer::open(b, &opts).await.unwrap().sync().await.unwrap();
    assert!(
        proxy.tampered() > 0,
        "the client asked for the group's manifests"
    );

    converge(&[a, b], &server).await;
    assert_eq!(tree(a), tree(b));
    let holding = |root: &std::path::Path, text: &str| -> Vec<String> {
        let hash = blake3::hash(text.as_bytes()).to_hex().to_string();
        tree(root)
            .into_iter()
            .filter(|(_, n)| matches!(n, Node::File { hash: h, .. } if *h == hash))
            .map(|(p, _)| p)
            .collect()
    };
    assert_eq!(holding(b, "from a 7\n"), ["n7.txt"]);
    let kept = holding(b, "written on b meanwhile\n");
    assert_eq!(
        kept.len(),
        1,
        "the file written on b survives once: {kept:?}"
    );
    assert_ne!(kept[0], "n7.txt");
    assert_eq!(tree(b).len(), 21, "the 20 files and the conflicted copy");
    server.stop().await;
}
