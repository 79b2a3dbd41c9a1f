//! TLS between the real client binary and a server: trusted through the system's roots (a test
//! CA put where rustls-native-certs looks, `SSL_CERT_FILE`), a CA file, or a pinned self-signed
//! certificate; and the refusals, each with a message that says what to do.

#![allow(clippy::unwrap_used)] // test code: a failure is a test failure

use std::path::Path;

use lbsync_server::ServerConfig;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::util::{Server, args, run, run_env, text, write};

/// A test CA named `name` and a server certificate for `localhost` it signed: (CA PEM, cert
/// PEM, key PEM).
fn test_pki(name: &str) -> (String, String, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

fn tls_config(cert: &str, key: &str) -> ServerConfig {
    ServerConfig {
        tls: Some((cert.as_bytes().to_vec(), key.as_bytes().to_vec())),
        ..ServerConfig::default()
    }
}

fn sync_args(dir: &Path, url: &str, more: &[&str]) -> Vec<String> {
    let mut a = args(&[
        "sync",
        dir.to_str().unwrap(),
        "--server",
        url,
        "--device",
        "d",
    ]);
    a.extend(more.iter().map(|s| s.to_string()));
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_ca_signed_certificate_is_trusted_through_the_system_roots_or_a_ca_file() {
    let (ca, cert, key) = test_pki("lbsync test CA");
    let server = Server::start_with(tls_config(&cert, &key)).await;
    let pki = tempfile::tempdir().unwrap();
    let ca_file = pki.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(a.path(), "notes.txt", "over TLS");

    // The system's roots, with the test CA installed for this process.
    let ca_env = [("SSL_CERT_FILE", ca_file.to_str().unwrap())];
    let out = run_env(sync_args(a.path(), &server.url, &[]), &ca_env).await;
    assert!(out.status.success(), "{}", text(&out));

    // Without it, the system does not know the CA.
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = test_pki("another CA");
    let other_file = other.path().join("other.pem");
    std::fs::write(&other_file, &other_ca).unwrap();
    let other_env = [("SSL_CERT_FILE", other_file.to_str().unwrap())];
    let out = run_env(sync_args(b.path(), &server.url, &[]), &other_env).await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not signed by a CA this client trusts")
            && text(&out).contains("--ca-file"),
        "{}",
        text(&out)
    );
    // A wrong --ca-file is refused the same way, and nothing was written.
    let out = run(sync_args(
        b.path(),
        &server.url,
        &["--ca-file", other_file.to_str().unwrap()],
    ))
    .await;
    assert!(!out.status.success());
    assert!(text(&out).contains("not signed by a CA"), "{}", text(&out));
    assert!(!b.path().join("notes.txt").exists());

    // The right --ca-file, remembered: the next sync needs no flag.
    let out = run(sync_args(
        b.path(),
        &server.url,
        &["--ca-file", ca_file.to_str().unwrap()],
    ))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(b.path().join("notes.txt")).unwrap(),
        "over TLS"
    );
    write(b.path(), "more.txt", "again");
    let out = run(args(&["sync", b.path().to_str().unwrap()])).await;
    assert!(out.status.success(), "{}", text(&out));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_certificate_is_trusted_by_its_pin_and_a_wrong_pin_is_refused() {
    let made = rcgen::generate_simple_self_signed(vec!["sync.example".to_owned()]).unwrap();
    let pin = lbsync_proto::tls::fingerprint(made.cert.der());
    let server = Server::start_with(tls_config(
        &made.cert.pem(),
        &made.signing_key.serialize_pem(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.txt", "pinned");

    // A pin says more than a name: the URL's name (localhost) need not be the certificate's.
    let wrong = format!("sha256:{}", "00".repeat(32));
    let out = run(sync_args(dir.path(), &server.url, &["--pin", &wrong])).await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!(
            "the server's certificate is {pin}, not the pinned one"
        )),
        "{}",
        text(&out)
    );
    let out = run(sync_args(
        dir.path(),
        &server.url,
        &["--pin", "sha256:nothex"],
    ))
    .await;
    assert!(!out.status.success());
    assert!(text(&out).contains("bad pin"), "{}", text(&out));

    // Several pins (the servers of one store, each with its own certificate): any one matches.
    let pins = format!("{wrong}, {pin}");
    let out = run(sync_args(dir.path(), &server.url, &["--pin", &pins])).await;
    assert!(out.status.success(), "{}", text(&out));
    // Remembered, with the server: `sync DIR` just works.
    write(dir.path(), "b.txt", "later");
    let out = run(args(&["sync", dir.path().to_str().unwrap()])).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 up"), "{}", text(&out));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_and_tls_on_the_wrong_port_are_told_apart() {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let pin = lbsync_proto::tls::fingerprint(made.cert.der());
    let tls = Server::start_with(tls_config(
        &made.cert.pem(),
        &made.signing_key.serialize_pem(),
    ))
    .await;
    let plain = Server::start().await;
    let dir = tempfile::tempdir().unwrap();

    // http:// to the TLS port.
    let url = tls.url.replace("https://", "http://");
    let start = std::time::Instant::now();
    let out = run(sync_args(dir.path(), &url, &[])).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("https://"), "{}", text(&out));
    assert!(start.elapsed().as_secs() < 20, "it fails, it does not wait");

    // https:// to the plain-text port.
    let url = plain.url.replace("http://", "https://");
    let out = run(sync_args(dir.path(), &url, &["--pin", &pin])).await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("does not speak TLS on this port"),
        "{}",
        text(&out)
    );
    tls.stop().await;
    plain.stop().await;
}

/// The README's first multi-machine setup: `lbsync-server cert`, then the server serves that
/// certificate, and a client pins the fingerprint `cert` printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_made_by_lbsync_server_cert_is_served_and_pinned() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let made =
        lbsync_server::tls::make_self_signed(&store, &["localhost".to_owned()], false).unwrap();
    let mut server = crate::procs::ServerProc::start(&store);
    let url = server.url.replace("http://127.0.0.1", "https://localhost");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(a.path(), "hello.txt", "from a");
    for dir in [a.path(), b.path()] {
        let out = run(sync_args(dir, &url, &["--pin", &made.fingerprint])).await;
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(
        std::fs::read_to_string(b.path().join("hello.txt")).unwrap(),
        "from a"
    );
    assert!(server.stop());
}
