//! The store's config object, `PREFIX/config`: written once when the store is created, read at
//! every open, never changed.
//!
//! ```json
//! {"format":1,"store_id":"<32 hex digits>","params":{"min_size":2048,"avg_size":8192,"max_size":65536},"min_grace_ms":600000}
//! ```
//!
//! `min_grace_ms` is the shortest grace period a collection of this store may use; servers keep
//! the chunks a commit references from being swept by refreshing their index time once it is
//! older than half of it (see [`crate::gc`]). A config written before the field existed means
//! [`DEFAULT_MIN_GRACE`].

use std::time::Duration;

use lbsync_chunkstore::ChunkParams;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The config format this version writes and reads.
pub(crate) const FORMAT: u32 = 1;

/// The minimum grace period of a store whose config does not say (ten minutes).
pub const DEFAULT_MIN_GRACE: Duration = Duration::from_secs(600);

fn default_min_grace_ms() -> u64 {
    DEFAULT_MIN_GRACE.as_millis() as u64
}

#[derive(Serialize, Deserialize)]
struct Params {
    min_size: u32,
    avg_size: u32,
    max_size: u32,
}

#[derive(Serialize, Deserialize)]
struct Json {
    format: u32,
    store_id: String,
    params: Params,
    #[serde(default = "default_min_grace_ms")]
    min_grace_ms: u64,
}

/// What the config object says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoreConfig {
    pub(crate) store_id: String,
    pub(crate) params: ChunkParams,
    /// The shortest grace period a collection may use.
    pub(crate) min_grace: Duration,
}

impl StoreConfig {
    /// A new store's config: the given params and minimum grace period, and 16 random bytes as
    /// its id.
    pub(crate) fn new(params: ChunkParams, min_grace: Duration) -> Result<Self> {
        params.validate()?;
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| Error::Random(e.to_string()))?;
        Ok(Self {
            store_id: id.iter().map(|b| format!("{b:02x}")).collect(),
            params,
            min_grace,
        })
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let json = Json {
            format: FORMAT,
            store_id: self.store_id.clone(),
            params: Params {
                min_size: self.params.min_size,
                avg_size: self.params.avg_size,
                max_size: self.params.max_size,
            },
            min_grace_ms: u64::try_from(self.min_grace.as_millis()).unwrap_or(u64::MAX),
        };
        serde_json::to_vec(&json).expect("a struct of strings and numbers serializes")
    }

    /// Decodes the object's bytes; the error says what is wrong with them.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        let json: Json = serde_json::from_slice(bytes)
            .map_err(|e| format!("its config object is not the JSON lbsync writes: {e}"))?;
        if json.format != FORMAT {
            return Err(format!(
                "its config says format {}, this lbsync reads format {FORMAT}: made by another \
                 version",
                json.format
            ));
        }
        let id = &json.store_id;
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("its store id {id:?} is not 32 hex digits"));
        }
        let p = json.params;
        let params = ChunkParams::new(p.min_size, p.avg_size, p.max_size)
            .map_err(|e| format!("its chunking parameters are invalid: {e}"))?;
        Ok(Self {
            store_id: json.store_id,
            params,
            min_grace: Duration::from_millis(json.min_grace_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_refuses_what_it_cannot_use() {
        let c = StoreConfig::new(ChunkParams::DEFAULT, Duration::from_secs(4)).unwrap();
        assert_eq!(StoreConfig::decode(&c.encode()).unwrap(), c);
        assert_ne!(
            StoreConfig::new(ChunkParams::DEFAULT, DEFAULT_MIN_GRACE)
                .unwrap()
                .store_id,
            c.store_id
        );
        // A config from before the minimum grace period was recorded.
        let old = String::from_utf8(c.encode())
            .unwrap()
            .replace(",\"min_grace_ms\":4000", "");
        assert!(!old.contains("min_grace"), "{old}");
        assert_eq!(
            StoreConfig::decode(old.as_bytes()).unwrap().min_grace,
            DEFAULT_MIN_GRACE
        );
        let text = String::from_utf8(c.encode()).unwrap();
        for (bad, says) in [
            (text.replace("\"format\":1", "\"format\":2"), "format 2"),
            (text.replace(&c.store_id, "xyz"), "32 hex"),
            ("{".to_string(), "not the JSON"),
        ] {
            let err = StoreConfig::decode(bad.as_bytes()).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
    }
}
