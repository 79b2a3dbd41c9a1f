//! Sealed paths in raw form (`Entry.raw_path`, `HistoryRequest.raw_path`): an encrypted
//! folder's path without its base64url text, a quarter shorter on the wire.
//!
//! ```text
//! text = base64url(c1) "/" base64url(c2) ...       (unpadded; each c = tag(16) || ct(32 n))
//! raw  = n1 u8 || c1 || n2 u8 || c2 ...            (n: the component's 32-byte blocks, 1..=255)
//! ```
//!
//! Both name the same path: the server stores and checks the text form, and converts at the
//! wire. Only a path whose every component has the shape of a sealed name has a raw form.

use crate::convert::ConvertError;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
/// A sealed component's tag, in front of its blocks.
const TAG: usize = 16;
/// A sealed component's block.
const BLOCK: usize = 32;

fn sextet(c: u8) -> Option<u32> {
    ALPHABET.iter().position(|&a| a == c).map(|i| i as u32)
}

/// Unpadded base64url of `b`, onto `out`.
fn encode(b: &[u8], out: &mut String) {
    for group in b.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &x)| n | u32::from(x) << (16 - 8 * i));
        for i in 0..=group.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
}

/// The bytes of unpadded base64url `s`; `None` for anything else (trailing bits included).
fn decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for group in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in group.iter().enumerate() {
            n |= sextet(c)? << (18 - 6 * i);
        }
        let bytes = group.len() - 1;
        // The bits past the last whole byte must be 0, as an encoder writes them.
        if n & ((1 << (24 - 8 * bytes)) - 1) != 0 {
            return None;
        }
        out.extend_from_slice(&n.to_be_bytes()[1..=bytes]);
    }
    Some(out)
}

/// The raw form of a sealed path's text; `None` when a component is not a sealed name's shape.
pub fn to_raw(text: &str) -> Option<Vec<u8>> {
    let mut raw = Vec::with_capacity(text.len() * 3 / 4 + 8);
    for comp in text.split('/') {
        let c = decode(comp)?;
        let blocks = c.len().checked_sub(TAG)?;
        if blocks == 0 || !blocks.is_multiple_of(BLOCK) {
            return None;
        }
        raw.push(u8::try_from(blocks / BLOCK).ok()?);
        raw.extend_from_slice(&c);
    }
    Some(raw)
}

/// The text form of a raw sealed path.
pub fn from_raw(mut raw: &[u8]) -> Result<String, ConvertError> {
    let bad = |expected: &str| ConvertError::BadLength {
        field: "raw_path",
        len: raw.len(),
        expected: expected.into(),
    };
    if raw.is_empty() {
        return Err(bad("at least one component"));
    }
    let mut text = String::with_capacity(raw.len() * 4 / 3 + 8);
    while let Some((&n, rest)) = raw.split_first() {
        let len = TAG + BLOCK * usize::from(n);
        if n == 0 || rest.len() < len {
            return Err(bad(
                "components of a block count (1 to 255) then 16 + 32 per block bytes",
            ));
        }
        if !text.is_empty() {
            text.push('/');
        }
        encode(&rest[..len], &mut text);
        raw = &rest[len..];
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trips_and_refuses_what_an_encoder_never_writes() {
        for n in 0..70usize {
            let b: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let mut s = String::new();
            encode(&b, &mut s);
            assert!(!s.contains('='));
            assert_eq!(decode(&s).unwrap(), b, "{n} bytes");
        }
        // 16 + 32 bytes of 0xfb are all '-' and '_'.
        let mut s = String::new();
        encode(&[0xfb; 3], &mut s);
        assert_eq!(s, "-_v7");
        assert!(decode("A").is_none());
        assert!(decode("AB").is_none(), "trailing bits");
        assert!(decode("AA").is_some());
        assert!(decode("A=").is_none());
        assert!(decode("A+").is_none());
    }

    #[test]
    fn a_sealed_path_goes_raw_and_back() {
        let comp = |n: usize, seed: u8| {
            let b: Vec<u8> = (0..TAG + BLOCK * n).map(|i| seed ^ i as u8).collect();
            let mut s = String::new();
            encode(&b, &mut s);
            s
        };
        let text = format!("{}/{}/{}", comp(1, 3), comp(2, 9), comp(1, 200));
        let raw = to_raw(&text).unwrap();
        assert_eq!(raw.len(), 3 + (TAG + BLOCK) * 2 + TAG + BLOCK * 2);
        assert_eq!(from_raw(&raw).unwrap(), text);
        // Not sealed names: no raw form.
        assert!(to_raw("file.txt").is_none());
        assert!(to_raw(&format!("{}/x", comp(1, 1))).is_none());
        assert!(to_raw(&comp(0, 1)).is_none());
        // Cut short, a zero block count, nothing.
        assert!(from_raw(&raw[..raw.len() - 1]).is_err());
        assert!(from_raw(&[0]).is_err());
        assert!(from_raw(&[]).is_err());
    }
}
