//! A store on a full disk: a small tmpfs, mounted in a private user and mount namespace
//! (`unshare -rm`) so that the test needs no privileges and leaves nothing mounted. The test
//! re-runs itself inside the namespace; where the namespace cannot be had, it says why and skips.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // runs in a child: a panic fails the test, stdout is its report

use std::io::Write;
use std::process::Command;

use lbsync_chunkstore::PackStore;
use lbsync_proto::{Content, pb};
use tonic::Code;

use crate::util::*;

const INSIDE: &str = "LBSYNC_TEST_DISK_FULL_INSIDE";
/// The exit code of a child that could not mount a tmpfs.
const SKIP: i32 = 77;

#[test]
fn a_full_disk_refuses_commits_and_recovers_when_space_is_freed() {
    if std::env::var_os(INSIDE).is_some() {
        return inside();
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["-rm", "--"])
        .arg(exe)
        .args([
            "--exact",
            "disk_full::a_full_disk_refuses_commits_and_recovers_when_space_is_freed",
            "--nocapture",
        ])
        .env(INSIDE, "1")
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            eprintln!("skipped: cannot run unshare ({e}); a full disk needs a private tmpfs");
            return;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => eprintln!(
            "{}",
            text.lines()
                .filter(|l| l.contains("full disk"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
        Some(SKIP) => eprintln!("skipped: {}", text.trim()),
        // unshare itself failed (no user namespaces here).
        _ if text.contains("unshare failed") || text.contains("unshare:") => {
            eprintln!(
                "skipped: no user namespace for a private tmpfs: {}",
                text.trim()
            )
        }
        _ => panic!("the test inside the namespace failed:\n{text}"),
    }
}

/// In the namespace: a 24 MiB tmpfs holding the store, filled up, then freed.
fn inside() {
    let mnt = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(mnt.path())
        .status();
    if !mounted.is_ok_and(|s| s.success()) {
        println!("cannot mount a tmpfs in a user namespace here");
        std::process::exit(SKIP);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = mnt.path().join("store");
        let server = TestServer::start(&store).await;
        let mut c = server.client().await;
        handshake(&mut c, "default").await;
        let first = seeded(2 << 20, 1);
        let (m1, _) = upload(&mut c, &first).await;
        committed(
            commit(
                &mut c,
                file_commit("default", "first.bin", &m1, 0, Content::Full(m1.clone())),
            )
            .await,
        );

        // Fill the disk.
        let filler = mnt.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        drop(f);

        // New chunks are refused with RESOURCE_EXHAUSTED and a message saying what to do.
        let second = seeded(4 << 20, 2);
        let err = upload_result(&mut c, &second).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("disk is full"), "{}", err.message());
        // A commit of content already stored (a copy) needs metadata space only.
        let res = c
            .commit(file_commit(
                "default",
                "copy.bin",
                &m1,
                0,
                Content::Known(m1.id()),
            ))
            .await;
        if let Err(err) = &res {
            assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        }
        let copied = res.is_ok();

        // Space comes back: the same upload and commit go through. When sled itself met the full
        // disk (its background flush can, at any moment while the disk was full), it refuses
        // writes until it is reopened, so the server is restarted then, as its error message
        // says; the refusal may come at the upload or only at the commit.
        std::fs::remove_file(&filler).unwrap();
        let first_try = upload_and_commit(&mut c, &second).await;
        let (server, mut c, m2) = match first_try {
            Ok(m2) => (server, c, m2),
            Err(err) => {
                assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
                assert!(err.message().contains("restart"), "{}", err.message());
                // Its last flush may fail the same way: what it had acknowledged is durable
                // already, and the restart recovers the rest.
                if let Err(e) = server.stop_result().await {
                    let e = format!("{e:?}");
                    assert!(e.contains("StorageFull"), "{e}");
                }
                let server = TestServer::start(&store).await;
                let mut c = server.client().await;
                handshake(&mut c, "default").await;
                let m2 = upload_and_commit(&mut c, &second).await.unwrap();
                (server, c, m2)
            }
        };
        if !copied {
            committed(
                commit(
                    &mut c,
                    file_commit("default", "copy.bin", &m1, 0, Content::Known(m1.id())),
                )
                .await,
            );
        }
        assert_eq!(download(&mut c, &m1).await, first);
        assert_eq!(download(&mut c, &m2).await, second);
        let hs = handshake(&mut c, "default").await;
        assert_eq!(hs.head, 3);
        server.stop().await;
        let report = lbsync_server::admin::fsck(&PackStore::open(&store).unwrap(), false).unwrap();
        assert!(
            report.is_clean(),
            "no corrupt pack after a full disk: {report}"
        );
        println!(
            "a full disk refused the upload (a metadata-only commit {}), recovered once freed; \
             fsck clean",
            if copied {
                "went through"
            } else {
                "was refused too"
            }
        );
    });
    let _ = Command::new("umount").arg(mnt.path()).status();
}

/// Uploads `data` and commits it as `second.bin` (a new path), returning the status of the
/// first call that fails.
async fn upload_and_commit(
    c: &mut Client,
    data: &[u8],
) -> Result<lbsync_chunkstore::Manifest, tonic::Status> {
    upload_result(c, data).await?;
    let (m, _) = upload(c, data).await;
    let outcome = c
        .commit(file_commit(
            "default",
            "second.bin",
            &m,
            0,
            Content::Full(m.clone()),
        ))
        .await?;
    committed(outcome.into_inner().try_into().unwrap());
    Ok(m)
}

/// Like `upload`, but returns the status instead of panicking on it.
async fn upload_result(c: &mut Client, data: &[u8]) -> Result<(), tonic::Status> {
    let chunks: Vec<_> =
        lbsync_chunkstore::Chunker::new(data, lbsync_chunkstore::ChunkParams::DEFAULT)
            .map(|r| r.unwrap().1)
            .map(|ch| lbsync_proto::wire::encode_chunk(ch.id(), ch.data()))
            .collect();
    let msgs: Vec<pb::PutChunksRequest> = chunks
        .chunks(64)
        .map(|b| pb::PutChunksRequest {
            chunks: b.to_vec(),
            ..Default::default()
        })
        .collect();
    c.put_chunks(tokio_stream::iter(msgs)).await.map(|_| ())
}
