//! Users' tokens through the real binaries: a revoked token stops a running `watch` within
//! seconds, saying why, and `sync` fails with the reason instead of retrying.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lbsync_chunkstore::PackStore;
use lbsync_server::meta::UserMeta;
use lbsync_server::users::SledUsers;

use crate::procs::{CLIENT_BIN, ServerProc, server_command};
use crate::util::{args, run, text, write};

/// Polls `cond` until it holds or `secs` pass.
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_stops_a_running_watch_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let (id, token) = {
        let s = PackStore::open(&store).unwrap();
        let users = SledUsers::open(s.db()).unwrap();
        users.add_user("alice").unwrap();
        let (info, token) = users.create_token("alice", false, None).unwrap();
        s.flush().unwrap();
        (info.id, token)
    };
    let server = ServerProc::start(&store);
    let token_file = tmp.path().join("alice.token");
    fs::write(&token_file, format!("{token}\n")).unwrap();
    let tf = token_file.to_str().unwrap().to_owned();
    let a = tmp.path().join("a");
    fs::create_dir(&a).unwrap();
    write(&a, "notes.txt", "alice's notes");

    let log = tmp.path().join("watch.log");
    let out = fs::File::create(&log).unwrap();
    let mut watch = Command::new(CLIENT_BIN)
        .args(["watch", a.to_str().unwrap(), "--server", &server.url])
        .args(["--token-file", &tf, "--folder", "notes", "--device", "w"])
        .args(["--debounce-ms", "50"])
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // The watch has synced: another device with the token gets the file.
    let b = tmp.path().join("b");
    fs::create_dir(&b).unwrap();
    let sync_b = |token_file: &str| {
        args(&[
            "sync",
            b.to_str().unwrap(),
            "--server",
            &server.url,
            "--token-file",
            token_file,
            "--folder",
            "notes",
            "--device",
            "b",
        ])
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = run(sync_b(&tf)).await;
        if b.join("notes.txt").exists() {
            assert!(o.status.success(), "{}", text(&o));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the watch never synced: {}\n{}",
            fs::read_to_string(&log).unwrap(),
            text(&o)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // What the watch said before the revocation (a slow machine may have made it retry a
    // timed-out call then): the refusal is judged on what it says after.
    let before_revoke = fs::read_to_string(&log).unwrap().len();
    let o = server_command(&["token", "revoke", &id, "--store", store.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let revoked = Instant::now();
    wait_for(10, "the watch to stop", || {
        watch.try_wait().unwrap().is_some()
    });
    let status = watch.wait().unwrap();
    let said = fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "a stopped watch exits non-zero: {said}");
    assert!(
        revoked.elapsed() < Duration::from_secs(8),
        "stopped in {:?}",
        revoked.elapsed()
    );
    assert!(said.contains(&format!("token {id} was revoked")), "{said}");
    assert!(
        !said[before_revoke..].contains("retrying"),
        "a refusal is not retried: {said}"
    );

    // `sync` with the revoked token fails at once and says why.
    let o = run(sync_b(&tf)).await;
    let said = text(&o);
    assert!(!o.status.success(), "{said}");
    assert!(said.contains("unknown or revoked token"), "{said}");
    assert!(said.contains("the token is not accepted"), "{said}");
    // Nothing was lost: the local files stay.
    assert_eq!(
        fs::read_to_string(a.join("notes.txt")).unwrap(),
        "alice's notes"
    );
    assert_eq!(
        fs::read_to_string(b.join("notes.txt")).unwrap(),
        "alice's notes"
    );
}

/// A member with read-only access downloads and never uploads: an edit here is kept on this
/// device as a conflicted copy (and the server's version put back), a deletion here is undone,
/// a new file stays here unsent; the owner's folder is unchanged by all of it.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_member_keeps_its_edits_to_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let tokens = {
        let s = PackStore::open(&store).unwrap();
        let users = SledUsers::open(s.db()).unwrap();
        users.add_user("alice").unwrap();
        users.add_user("bob").unwrap();
        let (_, alice) = users.create_token("alice", false, None).unwrap();
        let (_, bob) = users.create_token("bob", false, None).unwrap();
        s.flush().unwrap();
        [alice, bob]
    };
    let server = ServerProc::start(&store);
    let file = |who: &str, token: &str| {
        let f = tmp.path().join(format!("{who}.token"));
        fs::write(&f, format!("{token}\n")).unwrap();
        f.to_str().unwrap().to_owned()
    };
    let (alice_tf, bob_tf) = (file("alice", &tokens[0]), file("bob", &tokens[1]));
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    write(&a, "plan.txt", "alice's plan");
    write(&a, "notes/keep.txt", "keep me");
    let sync = |dir: &std::path::Path, tf: &str, device: &str| {
        args(&[
            "sync",
            dir.to_str().unwrap(),
            "--server",
            &server.url,
            "--token-file",
            tf,
            "--folder",
            "plans",
            "--device",
            device,
        ])
    };
    let o = run(sync(&a, &alice_tf, "a")).await;
    assert!(o.status.success(), "{}", text(&o));
    let o = server_command(&[
        "share",
        "plans",
        "--with",
        "bob",
        "--read-only",
        "--store",
        store.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(sync(&b, &bob_tf, "b")).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        fs::read_to_string(b.join("plan.txt")).unwrap(),
        "alice's plan"
    );

    // Bob edits, deletes and creates.
    write(&b, "plan.txt", "bob's idea");
    fs::remove_file(b.join("notes/keep.txt")).unwrap();
    write(&b, "mine.txt", "bob's own");
    let o = run(sync(&b, &bob_tf, "b")).await;
    let said = text(&o);
    assert!(o.status.success(), "{said}");
    assert!(said.contains("read-only for this device"), "{said}");
    assert!(said.contains("kept on this device only"), "{said}");
    assert_eq!(
        fs::read_to_string(b.join("plan.txt")).unwrap(),
        "alice's plan"
    );
    assert_eq!(
        fs::read_to_string(b.join("notes/keep.txt")).unwrap(),
        "keep me",
        "a deletion here is undone"
    );
    assert_eq!(fs::read_to_string(b.join("mine.txt")).unwrap(), "bob's own");
    let copies: Vec<String> = fs::read_dir(&b)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("conflicted copy"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(
        fs::read_to_string(b.join(&copies[0])).unwrap(),
        "bob's idea",
        "bob's edit is kept, here"
    );
    // A second sync changes nothing more, and alice's side saw none of it.
    let o = run(sync(&b, &bob_tf, "b")).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("0 up"), "{}", text(&o));
    let o = run(sync(&a, &alice_tf, "a")).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("0 down"), "{}", text(&o));
    assert!(!a.join("mine.txt").exists());
    assert!(!a.join(&copies[0]).exists());
    assert_eq!(
        fs::read_to_string(a.join("plan.txt")).unwrap(),
        "alice's plan"
    );

    // A directory replaced by a symlink to elsewhere: nothing outside is looked at or moved,
    // and the directory comes back.
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("keep.txt"), "not bob's folder").unwrap();
    fs::remove_dir_all(b.join("notes")).unwrap();
    std::os::unix::fs::symlink(&outside, b.join("notes")).unwrap();
    let o = run(sync(&b, &bob_tf, "b")).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        1,
        "nothing is moved into or out of the symlink's target"
    );
    assert_eq!(
        fs::read_to_string(outside.join("keep.txt")).unwrap(),
        "not bob's folder"
    );
    assert!(fs::symlink_metadata(b.join("notes")).unwrap().is_dir());
    assert_eq!(
        fs::read_to_string(b.join("notes/keep.txt")).unwrap(),
        "keep me"
    );
    drop(server);
}
