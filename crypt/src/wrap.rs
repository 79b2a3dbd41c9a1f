//! Wrapping the folder key for the server to keep: with a passphrase (age's scrypt recipient) or
//! to an age x25519 recipient. The age plaintext is `"lbsync-folder-key-v1\n"` and the 32 key
//! bytes.

use std::fmt;
use std::str::FromStr;

use age::secrecy::{ExposeSecret, SecretString};
use age::{DecryptError, x25519};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::key::{FolderKey, KEY_FILE_TAG};

/// `WrappedKey.kind` of a passphrase wrap.
pub const KIND_PASSPHRASE: &str = "passphrase";
/// `WrappedKey.kind` of a wrap to an age x25519 recipient (its `label` is the recipient).
pub const KIND_X25519: &str = "x25519";

/// For tests only: the scrypt work factor (log2 N) for new passphrase wraps, honoured when in
/// `10..=22`; otherwise (and unset) age's default, which takes about a second.
pub const SCRYPT_LOG_N_ENV: &str = "LBSYNC_SCRYPT_LOG_N";

/// The highest scrypt work factor an unwrap accepts: a wrapped key from a hostile server could
/// otherwise ask for hours of work and gigabytes of memory.
pub const MAX_SCRYPT_LOG_N: u8 = 22;

fn plaintext(key: &FolderKey) -> Zeroizing<Vec<u8>> {
    let mut pt = Zeroizing::new(Vec::with_capacity(KEY_FILE_TAG.len() + 1 + 32));
    pt.extend_from_slice(KEY_FILE_TAG.as_bytes());
    pt.push(b'\n');
    pt.extend_from_slice(key.bytes());
    pt
}

fn key_of(pt: Zeroizing<Vec<u8>>) -> Result<FolderKey> {
    let head = KEY_FILE_TAG.len() + 1;
    if pt.len() != head + 32 || &pt[..head - 1] != KEY_FILE_TAG.as_bytes() || pt[head - 1] != b'\n'
    {
        return Err(Error::BadKeyFile {
            why: "the wrapped key opens, but not to an lbsync folder key".into(),
        });
    }
    Ok(FolderKey::from_bytes(
        pt[head..].try_into().expect("32 bytes"),
    ))
}

/// The work factor from the value of [`SCRYPT_LOG_N_ENV`], if it is one in `10..=22`.
pub(crate) fn log_n_from(value: Option<&str>) -> Option<u8> {
    value?
        .trim()
        .parse::<u8>()
        .ok()
        .filter(|n| (10..=22).contains(n))
}

/// Wraps `key` with `passphrase` (age scrypt; age's default work factor, about a second, unless
/// [`SCRYPT_LOG_N_ENV`] says otherwise for tests). The result is an age file.
pub fn wrap_with_passphrase(key: &FolderKey, passphrase: &str) -> Result<Vec<u8>> {
    let log_n = log_n_from(std::env::var(SCRYPT_LOG_N_ENV).ok().as_deref());
    wrap_with_passphrase_at(key, passphrase, log_n)
}

pub(crate) fn wrap_with_passphrase_at(
    key: &FolderKey,
    passphrase: &str,
    log_n: Option<u8>,
) -> Result<Vec<u8>> {
    if passphrase.is_empty() {
        return Err(Error::BadInput(
            "the passphrase is empty: choose one (a long one: whoever has it and the server's data \
             can read the folder)"
                .into(),
        ));
    }
    let mut r = age::scrypt::Recipient::new(SecretString::from(passphrase.to_owned()));
    if let Some(n) = log_n {
        r.set_work_factor(n);
    }
    age::encrypt(&r, &plaintext(key))
        .map_err(|e| Error::BadInput(format!("could not wrap the folder key: {e}")))
}

/// Opens a passphrase wrap made by [`wrap_with_passphrase`].
pub fn unwrap_with_passphrase(wrapped: &[u8], passphrase: &str) -> Result<FolderKey> {
    let mut id = age::scrypt::Identity::new(SecretString::from(passphrase.to_owned()));
    id.set_max_work_factor(MAX_SCRYPT_LOG_N);
    match age::decrypt(&id, wrapped) {
        Ok(pt) => key_of(Zeroizing::new(pt)),
        Err(DecryptError::DecryptionFailed | DecryptError::KeyDecryptionFailed) => {
            Err(Error::WrongPassphrase)
        }
        Err(DecryptError::NoMatchingKeys) => Err(Error::BadKeyFile {
            why: "this wrapped key is not a passphrase wrap".into(),
        }),
        Err(DecryptError::ExcessiveWork { required, .. }) => Err(Error::BadKeyFile {
            why: format!(
                "the passphrase wrap asks for scrypt work factor {required}, over the \
                 {MAX_SCRYPT_LOG_N} accepted (it would take very long): re-wrap the key from a \
                 device that has it"
            ),
        }),
        Err(e) => Err(Error::BadKeyFile {
            why: format!("the passphrase wrap is damaged: {e}"),
        }),
    }
}

/// Wraps `key` to an age x25519 recipient (`age1...`).
pub fn wrap_to_recipient(key: &FolderKey, recipient: &str) -> Result<Vec<u8>> {
    let r = x25519::Recipient::from_str(recipient.trim()).map_err(|e| {
        Error::BadInput(format!(
            "{recipient:?} is not an age x25519 recipient (age1...): {e}; `lbsync-client keygen` \
             prints one"
        ))
    })?;
    age::encrypt(&r, &plaintext(key))
        .map_err(|e| Error::BadInput(format!("could not wrap the folder key: {e}")))
}

/// Opens a wrap made by [`wrap_to_recipient`] with the matching identity.
pub fn unwrap_with_identity(wrapped: &[u8], identity: &Identity) -> Result<FolderKey> {
    match age::decrypt(&identity.0, wrapped) {
        Ok(pt) => key_of(Zeroizing::new(pt)),
        Err(DecryptError::NoMatchingKeys) => Err(Error::NotThisFolder),
        Err(e) => Err(Error::BadKeyFile {
            why: format!("the wrapped key is damaged: {e}"),
        }),
    }
}

/// An age x25519 identity (secret key), kept in a file in the `age-keygen` format.
#[derive(Clone)]
pub struct Identity(x25519::Identity);

impl Identity {
    /// A new random identity.
    pub fn generate() -> Self {
        Self(x25519::Identity::generate())
    }

    /// Reads an identity file: lines, `#` comments and blank lines skipped, the first
    /// `AGE-SECRET-KEY-1...` line is the key.
    pub fn from_file_text(text: &str) -> Result<Self> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| Error::BadKeyFile {
                why: "the identity file holds no key (expected a line AGE-SECRET-KEY-1...)".into(),
            })?;
        x25519::Identity::from_str(line)
            .map(Self)
            .map_err(|e| Error::BadKeyFile {
                why: format!(
                    "the identity file's key is not an age x25519 secret key ({e}): expected \
                 AGE-SECRET-KEY-1..., as `lbsync-client keygen` or `age-keygen` write"
                ),
            })
    }

    /// The identity file's text, as `age-keygen` writes it (without the date).
    pub fn to_file_text(&self) -> String {
        format!(
            "# public key: {}\n{}\n",
            self.recipient(),
            self.0.to_string().expose_secret()
        )
    }

    /// The public recipient (`age1...`) others wrap folder keys to.
    pub fn recipient(&self) -> String {
        self.0.to_public().to_string()
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.recipient())
    }
}
