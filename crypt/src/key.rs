//! [`FolderKey`]: the random key of one encrypted folder, its subkeys and its text form.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Error, Result};

/// The first word of a folder key file, and the prefix of the plaintext age wraps.
pub const KEY_FILE_TAG: &str = "lbsync-folder-key-v1";

pub(crate) const CTX_CHUNK_BLOCK: &str = "lbsync 2026-12-02 chunk block";
pub(crate) const CTX_CHUNK_NONCE: &str = "lbsync 2026-12-02 chunk nonce";
pub(crate) const CTX_CHUNK_AEAD: &str = "lbsync 2026-12-02 chunk aead";
pub(crate) const CTX_LENGTH_MASK: &str = "lbsync 2026-12-02 length mask";
pub(crate) const CTX_PATH_SIV_1: &str = "lbsync 2026-12-02 path siv 1";
pub(crate) const CTX_PATH_SIV_2: &str = "lbsync 2026-12-02 path siv 2";
pub(crate) const CTX_ENTRY_AEAD: &str = "lbsync 2026-12-02 entry aead";
pub(crate) const CTX_ENTRY_SIV: &str = "lbsync 2026-12-03 entry siv";
pub(crate) const CTX_FINGERPRINT: &str = "lbsync 2026-12-02 fingerprint";

/// The 32-byte key of one encrypted folder. Zeroed on drop; its `Debug` shows only the
/// fingerprint. It never leaves the device except wrapped ([`crate::wrap_with_passphrase`],
/// [`crate::wrap_to_recipient`]) and is kept locally in the text form of
/// [`FolderKey::to_file_text`].
#[derive(Clone)]
pub struct FolderKey([u8; 32]);

impl FolderKey {
    /// A new random key from the operating system's randomness.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        crate::random::fill(&mut k);
        Self(k)
    }

    /// The key with these bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn subkey(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.0)
    }

    /// A short, non-secret fingerprint (`ab12-cd34-ef56-7890-abcd`: the first 10 bytes of the
    /// fingerprint subkey in hex, in groups of 4), printed on every device so that people can
    /// check out of band that they hold the same key.
    pub fn fingerprint(&self) -> String {
        let mut sub = self.subkey(CTX_FINGERPRINT);
        let hex = to_hex(&sub[..10]);
        sub.zeroize();
        hex.as_bytes()
            .chunks(4)
            .map(|g| std::str::from_utf8(g).expect("hex is ASCII"))
            .collect::<Vec<_>>()
            .join("-")
    }

    /// The local key file's text: `lbsync-folder-key-v1 <64 hex>\n`.
    pub fn to_file_text(&self) -> String {
        format!("{KEY_FILE_TAG} {}\n", to_hex(&self.0))
    }

    /// Reads the text written by [`FolderKey::to_file_text`] (surrounding whitespace allowed).
    pub fn from_file_text(text: &str) -> Result<Self> {
        let bad = |why: &str| Error::BadKeyFile {
            why: format!(
                "{why}; expected one line '{KEY_FILE_TAG} <64 hex digits>' (restore it from a \
                 backup, or join the folder again with its passphrase)"
            ),
        };
        let mut words = text.split_ascii_whitespace();
        if words.next() != Some(KEY_FILE_TAG) {
            return Err(bad(&format!("it does not start with {KEY_FILE_TAG}")));
        }
        let hex = words.next().ok_or_else(|| bad("the key is missing"))?;
        if words.next().is_some() {
            return Err(bad("there is more after the key"));
        }
        let mut k = [0u8; 32];
        if !from_hex(hex, &mut k) {
            k.zeroize();
            return Err(bad("the key is not 64 hex digits"));
        }
        Ok(Self(k))
    }

    /// The ciphers of this folder, ready to seal and open (cheap to clone and share).
    pub fn crypt(&self) -> crate::FolderCrypt {
        crate::FolderCrypt::new(self)
    }
}

impl Drop for FolderKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for FolderKey {}

impl PartialEq for FolderKey {
    fn eq(&self, other: &Self) -> bool {
        // Not secret-dependent timing that matters here (both sides are local), but cheap to do
        // in constant time.
        blake3::Hash::from_bytes(self.0) == blake3::Hash::from_bytes(other.0)
    }
}

impl Eq for FolderKey {}

impl fmt::Debug for FolderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FolderKey({})", self.fingerprint())
    }
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Fills `out` from exactly `2 * out.len()` hex digits (either case); false if they are not.
fn from_hex(hex: &str, out: &mut [u8]) -> bool {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    if hex.len() != out.len() * 2 {
        return false;
    }
    for (o, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => *o = h << 4 | l,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_text_round_trips_and_bad_files_say_why() {
        let k = FolderKey::generate();
        let text = k.to_file_text();
        assert!(text.starts_with("lbsync-folder-key-v1 ") && text.ends_with('\n'));
        assert_eq!(text.len(), KEY_FILE_TAG.len() + 1 + 64 + 1);
        assert_eq!(FolderKey::from_file_text(&text).unwrap(), k);
        assert_eq!(
            FolderKey::from_file_text(
                &text
                    .to_uppercase()
                    .replace("LBSYNC-FOLDER-KEY-V1", KEY_FILE_TAG)
            )
            .unwrap(),
            k
        );
        for (bad, why) in [
            ("", "does not start"),
            ("lbsync-folder-key-v2 00", "does not start"),
            ("lbsync-folder-key-v1", "missing"),
            ("lbsync-folder-key-v1 abc", "64 hex"),
            (&format!("{KEY_FILE_TAG} {}", "g".repeat(64)), "64 hex"),
            (&format!("{} extra", text.trim()), "more after"),
        ] {
            let err = FolderKey::from_file_text(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn fingerprint_is_grouped_stable_and_debug_shows_only_it() {
        let k = FolderKey::from_bytes([1; 32]);
        let fp = k.fingerprint();
        assert_eq!(fp.len(), 24);
        assert_eq!(fp.split('-').count(), 5);
        let sub = blake3::derive_key(CTX_FINGERPRINT, &[1; 32]);
        assert_eq!(fp.replace('-', ""), to_hex(&sub[..10]));
        assert_ne!(fp, FolderKey::from_bytes([2; 32]).fingerprint());
        let dbg = format!("{k:?}");
        assert_eq!(dbg, format!("FolderKey({fp})"));
        assert!(!dbg.contains(&to_hex(&[1; 32])[..8]));
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(FolderKey::generate(), FolderKey::generate());
    }
}
