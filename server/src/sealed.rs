//! What the server can check of an end-to-end encrypted folder (docs/PROTOCOL.md, "Encrypted
//! folders"): the shape of its wrapped keys, and that every entry committed to it is in its
//! server form (metadata sealed, path components sealed names). The server holds no key: it
//! cannot open anything, only refuse what is plainly not sealed, so that a client that forgot to
//! encrypt cannot leak names, sizes or times into the folder.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lbsync_proto::{Entry, pb};

use crate::error::{Error, Result};

/// Most wrapped keys a folder holds.
pub const MAX_WRAPPED_KEYS: usize = 16;
/// Longest `WrappedKey.kind`, in bytes.
pub const MAX_KIND_BYTES: usize = 32;
/// Longest `WrappedKey.label`, in bytes.
pub const MAX_LABEL_BYTES: usize = 256;
/// Longest `WrappedKey.age` (the age file), in bytes.
pub const MAX_AGE_BYTES: usize = 4096;
/// The kinds of wrapped key a folder may hold.
pub const KINDS: [&str; 2] = ["passphrase", "x25519"];

/// A sealed path component decodes to a 16-byte tag and a whole number (at least one) of these.
const NAME_BLOCK: usize = 32;
const NAME_TAG: usize = 16;

/// Checks the wrapped keys a SetFolderKeys sends for `folder`: 1 to [`MAX_WRAPPED_KEYS`], each of
/// a known kind and within the size limits. Says which one is wrong and why.
pub fn check_wrapped_keys(folder: &str, wrapped: &[pb::WrappedKey]) -> Result<()> {
    if wrapped.is_empty() {
        return Err(Error::BadRequest(format!(
            "SetFolderKeys for folder {folder} sends no wrapped key: an encrypted folder keeps at \
             least one (a folder never goes back to plain); send the keys to keep"
        )));
    }
    if wrapped.len() > MAX_WRAPPED_KEYS {
        return Err(Error::BadRequest(format!(
            "SetFolderKeys for folder {folder} sends {} wrapped keys, the limit is \
             {MAX_WRAPPED_KEYS}: drop some (e.g. shares to recipients no longer used)",
            wrapped.len()
        )));
    }
    for (i, w) in wrapped.iter().enumerate() {
        let bad = |why: String| {
            Err(Error::BadRequest(format!(
                "wrapped key {i} for folder {folder}: {why}"
            )))
        };
        if w.kind.len() > MAX_KIND_BYTES || !KINDS.contains(&w.kind.as_str()) {
            let shown: String = w.kind.chars().take(MAX_KIND_BYTES).collect();
            return bad(format!(
                "kind {shown:?} is not one of {KINDS:?}: upgrade the server if a newer client \
                 wraps keys another way"
            ));
        }
        if w.label.len() > MAX_LABEL_BYTES {
            return bad(format!(
                "its label is {} bytes, the limit is {MAX_LABEL_BYTES}",
                w.label.len()
            ));
        }
        if w.age.is_empty() || w.age.len() > MAX_AGE_BYTES {
            return bad(format!(
                "its age file is {} bytes, expected 1 to {MAX_AGE_BYTES}",
                w.age.len()
            ));
        }
    }
    Ok(())
}

/// Whether a path component has the shape of a sealed name: unpadded base64url of a 16-byte tag
/// and `32 k` bytes of ciphertext, `k >= 1`.
pub fn is_sealed_name(component: &str) -> bool {
    // Decoding checks the alphabet, the length and that no bits trail.
    match URL_SAFE_NO_PAD.decode(component) {
        Ok(raw) => {
            raw.len() >= NAME_TAG + NAME_BLOCK && (raw.len() - NAME_TAG).is_multiple_of(NAME_BLOCK)
        }
        Err(_) => false,
    }
}

/// Checks an entry committed to `folder` against the folder's kind. In a plain folder `sealed`
/// must be empty. In an encrypted one the entry must be in its server form: `sealed` set; size,
/// mode and mtime 0 and no symlink target (they travel sealed); every path component a sealed
/// name. Nothing of the entry's path or `sealed` is put in the message (an encrypted folder's
/// path may be a name the client failed to seal).
pub fn check_entry(folder: &str, encrypted: bool, e: &Entry) -> Result<()> {
    if !encrypted {
        if !e.sealed.is_empty() {
            return Err(Error::BadRequest(format!(
                "the commit of {} carries sealed metadata, but folder {folder} is not encrypted: \
                 nothing was committed; send sealed only to a folder the handshake says is \
                 encrypted",
                e.path
            )));
        }
        return Ok(());
    }
    let refuse = |why: &str| {
        Err(Error::BadRequest(format!(
            "a commit to encrypted folder {folder} {why}: nothing was committed; the client must \
             seal every entry with the folder key (a client that cannot must not write to this \
             folder)"
        )))
    };
    if e.sealed.is_empty() {
        return refuse("has no sealed metadata");
    }
    if e.size != 0 || e.mode != 0 || e.mtime_ns != 0 {
        return refuse("shows its size, mode or mtime (they must be 0 and travel sealed)");
    }
    if e.symlink_target.is_some() {
        return refuse("shows a symlink target (it must be empty and travel sealed)");
    }
    if let Some(i) = e.path.as_str().split('/').position(|c| !is_sealed_name(c)) {
        return refuse(&format!(
            "has a path whose component {} is not a sealed name (unpadded base64url of 16 + 32k \
             bytes)",
            i + 1
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(len: usize) -> String {
        URL_SAFE_NO_PAD.encode(vec![0xa5u8; len])
    }

    #[test]
    fn sealed_names_are_a_tag_and_whole_blocks_of_base64url() {
        assert!(is_sealed_name(&name(48)));
        assert!(is_sealed_name(&name(16 + 32 * 7)));
        for len in [0, 16, 47, 49, 64, 16 + 32 * 2 + 1] {
            assert!(!is_sealed_name(&name(len)), "{len} bytes");
        }
        let good = name(48);
        assert!(!is_sealed_name(&format!("{good}=")), "padding");
        assert!(
            !is_sealed_name(&good.replace('p', "+")),
            "standard alphabet"
        );
        assert!(!is_sealed_name("notes.txt"));
        assert!(!is_sealed_name(".."));
        // 80 bytes end in a 3-character group whose last 2 bits are unused: set, refused.
        let mut bits = name(80);
        assert!(is_sealed_name(&bits));
        assert_eq!(bits.pop(), Some('U'));
        bits.push('V');
        assert!(!is_sealed_name(&bits));
    }

    #[test]
    fn wrapped_keys_are_bounded() {
        let key = |kind: &str, label: &str, age: usize| pb::WrappedKey {
            kind: kind.into(),
            label: label.into(),
            age: vec![1u8; age].into(),
        };
        check_wrapped_keys(
            "f",
            &[key("passphrase", "", 300), key("x25519", "age1x", 4096)],
        )
        .unwrap();
        for (keys, what) in [
            (vec![], "no wrapped key"),
            (vec![key("passphrase", "", 10); 17], "17 wrapped keys"),
            (vec![key("rsa", "", 10)], "not one of"),
            (vec![key(&"x".repeat(33), "", 10)], "not one of"),
            (
                vec![key("x25519", &"l".repeat(257), 10)],
                "label is 257 bytes",
            ),
            (vec![key("x25519", "", 4097)], "4097 bytes"),
            (vec![key("x25519", "", 0)], "0 bytes"),
        ] {
            let err = check_wrapped_keys("f", &keys).unwrap_err().to_string();
            assert!(err.contains(what), "{what}: {err}");
        }
    }
}
