//! The server's TLS certificate: loading it, its fingerprint, and `lbsync-server cert`, which
//! makes a self-signed one in `STORE/tls/` for a first setup.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// A certificate chain and key to serve, with the fingerprint clients pin.
pub struct Loaded {
    /// The PEM certificate chain.
    pub cert_pem: Vec<u8>,
    /// The PEM private key.
    pub key_pem: Vec<u8>,
    /// `sha256:...` of the first (the server's own) certificate.
    pub fingerprint: String,
}

/// Where `lbsync-server cert` puts its certificate and key.
pub fn made_paths(store: &Path) -> (PathBuf, PathBuf) {
    let dir = store.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Reads a certificate chain and key.
pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Loaded> {
    let cert_pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let key_pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    let first = CertificateDer::pem_slice_iter(&cert_pem)
        .next()
        .with_context(|| {
            format!(
                "{} holds no certificate (BEGIN CERTIFICATE): pass a PEM certificate chain",
                cert.display()
            )
        })?
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    Ok(Loaded {
        fingerprint: lbsync_proto::tls::fingerprint(first.as_ref()),
        cert_pem,
        key_pem,
    })
}

/// The certificate `lbsync-server cert` made for this store, if it made one.
pub fn load_made(store: &Path) -> anyhow::Result<Option<Loaded>> {
    let (cert, key) = made_paths(store);
    if !cert.exists() {
        return Ok(None);
    }
    load(&cert, &key).map(Some)
}

/// What `cert` made.
#[derive(Debug)]
pub struct Made {
    /// The certificate file.
    pub cert: PathBuf,
    /// The key file.
    pub key: PathBuf,
    /// Its fingerprint.
    pub fingerprint: String,
    /// The names it is for.
    pub names: Vec<String>,
}

impl fmt::Display for Made {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "made a self-signed certificate for {} in {} (key: {})",
            self.names.join(", "),
            self.cert.display(),
            self.key.display()
        )?;
        writeln!(f, "fingerprint: {}", self.fingerprint)?;
        writeln!(f, "the server serves it from now on; clients connect with")?;
        write!(
            f,
            "  lbsync-client sync DIR --server https://{}:7700 --pin {}",
            self.names.first().map(String::as_str).unwrap_or("HOST"),
            self.fingerprint
        )
    }
}

/// Makes a self-signed certificate for `names` (else this host's name and localhost) in
/// `STORE/tls/`; refuses to replace one unless `force`.
pub fn make_self_signed(store: &Path, names: &[String], force: bool) -> anyhow::Result<Made> {
    let (cert_path, key_path) = made_paths(store);
    if cert_path.exists() && !force {
        bail!(
            "{} already exists: the server serves it, and clients may have pinned it. Pass \
             --force to replace it (then give clients the new fingerprint)",
            cert_path.display()
        );
    }
    let names: Vec<String> = if names.is_empty() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        [host, "localhost".to_owned()]
            .into_iter()
            .filter(|n| !n.is_empty())
            .collect()
    } else {
        names.to_vec()
    };
    let made = rcgen::generate_simple_self_signed(names.clone())
        .with_context(|| format!("making a certificate for {names:?}"))?;
    let dir = cert_path.parent().unwrap_or(store);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_private(&key_path, made.signing_key.serialize_pem().as_bytes())?;
    write_private(&cert_path, made.cert.pem().as_bytes())?;
    Ok(Made {
        fingerprint: lbsync_proto::tls::fingerprint(made.cert.der()),
        cert: cert_path,
        key: key_path,
        names,
    })
}

/// Writes a file readable by its owner only, replacing any file (never following a link) there.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_made_certificate_loads_with_the_same_fingerprint_and_is_not_replaced_by_accident() {
        let store = tempfile::tempdir().unwrap();
        assert!(load_made(store.path()).unwrap().is_none());
        let made = make_self_signed(store.path(), &["sync.example".into()], false).unwrap();
        let loaded = load_made(store.path()).unwrap().unwrap();
        assert_eq!(loaded.fingerprint, made.fingerprint);
        assert!(made.to_string().contains("--pin sha256:"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&made.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = make_self_signed(store.path(), &[], false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        let again = make_self_signed(store.path(), &[], true).unwrap();
        assert_ne!(again.fingerprint, made.fingerprint);
    }
}
