//! Content ids: BLAKE3-256 hashes as distinct newtypes.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            /// The length of an id in bytes.
            pub const LEN: usize = 32;

            /// The id of `bytes`: their BLAKE3-256 hash.
            pub fn of(bytes: &[u8]) -> Self {
                Self(*blake3::hash(bytes).as_bytes())
            }

            /// An id from its raw 32 bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// An id from a slice, if it is exactly 32 bytes long.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                bytes.try_into().ok().map(Self)
            }

            /// The raw 32 bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(blake3::Hash::from_bytes(self.0).to_hex().as_str())
            }
        }

        impl fmt::Debug for $name {
            /// The first 8 hex digits: enough to tell ids apart in logs and test output.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let hex = blake3::Hash::from_bytes(self.0).to_hex();
                write!(f, "{}({})", stringify!($name), &hex.as_str()[..8])
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self, Error> {
                blake3::Hash::from_hex(s)
                    .map(|h| Self(*h.as_bytes()))
                    .map_err(|_| Error::BadId(s.to_owned()))
            }
        }

        impl From<blake3::Hash> for $name {
            fn from(h: blake3::Hash) -> Self {
                Self(*h.as_bytes())
            }
        }
    };
}

hash_id!(
    /// The id of a chunk: the BLAKE3-256 hash of its (uncompressed) bytes.
    ChunkId
);

hash_id!(
    /// The id of a manifest: the BLAKE3-256 hash of its binary encoding.
    ManifestId
);

impl ManifestId {
    /// A manifest is stored in the chunk store as a blob; this is the id it is stored under.
    pub const fn as_chunk_id(&self) -> ChunkId {
        ChunkId::from_bytes(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_known_vector() {
        let id = ChunkId::of(b"");
        // BLAKE3 of the empty input, from the BLAKE3 specification's test vectors.
        assert_eq!(
            id.to_string(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(id.to_string().parse::<ChunkId>().unwrap(), id);
        assert_eq!(format!("{id:?}"), "ChunkId(af1349b9)");
    }

    #[test]
    fn bad_hex_is_a_clear_error() {
        let err = "xyz".parse::<ChunkId>().unwrap_err();
        assert!(err.to_string().contains("64 hexadecimal digits"), "{err}");
        assert!("ab".repeat(31).parse::<ManifestId>().is_err());
    }
}
