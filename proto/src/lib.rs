//! lbsync's protocol: the gRPC service `lbsync.v1.Sync`, the sync model it carries, and the
//! conversions between the two.
//!
//! - [`pb`]: types and stubs generated from `lbsync/v1/sync.proto`. They stop at this crate's edge:
//!   the server's handlers and the client convert on their first line.
//! - [`model`]: [`Entry`], [`SyncPath`], commit requests and outcomes, as the rest of lbsync uses them.
//! - [`convert`]: `From<domain> for pb::X` and `TryFrom<pb::X> for domain`, the latter validating
//!   (ids are 32 bytes, paths are relative and clean, manifests decode).
//!
//! ```
//! use lbsync_proto::{SyncPath, pb};
//!
//! let path = SyncPath::new("docs/notes.txt")?;
//! assert!(SyncPath::new("../etc/passwd").is_err());
//! let wire: pb::Entry = lbsync_proto::Entry::dir(path.clone(), "laptop").into();
//! let back = lbsync_proto::Entry::try_from(wire)?;
//! assert_eq!(back.path, path);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod convert;
#[doc(hidden)]
pub mod fuzzing;
pub mod model;
pub mod path;
pub mod raw_path;
pub mod tls;
pub mod wire;

/// Generated protobuf types and gRPC stubs.
pub mod pb {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    tonic::include_proto!("lbsync.v1");
}

/// The encoded `FileDescriptorSet` of `lbsync/v1/*.proto` (with their imports), as server
/// reflection serves it.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lbsync_descriptor");

pub use convert::{ConvertError, check_device, ids_from_bytes, ids_to_bytes};
pub use model::{
    BatchOutcome, CommitOutcome, CommitRequest, Content, Entry, EntryKind, PROTOCOL_VERSION,
    SameContent,
};
pub use path::{PathError, SyncPath};

/// HTTP/2 settings both ends use. Fixed, large flow-control windows and frames: chunk uploads
/// stream megabytes per RPC, and hyper's adaptive windows stall such a stream on a fast link.
pub mod http2 {
    /// Per-stream flow-control window.
    pub const STREAM_WINDOW: u32 = 4 << 20;
    /// Per-connection flow-control window (two streams in full flight).
    pub const CONNECTION_WINDOW: u32 = 8 << 20;
    /// Largest frame: one 1 MiB chunk message in a few frames, not 64.
    pub const MAX_FRAME: u32 = 1 << 20;
}

/// An error and its sources, "a: b: c": how both ends put a transport or storage error in words.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // Wrappers often repeat their cause ("tcp connect error: tcp connect error"): say each
        // thing once.
        let said = s.to_string();
        if !said.is_empty() && !out.contains(&said) {
            out.push_str(": ");
            out.push_str(&said);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("{msg}")]
    struct E {
        msg: &'static str,
        #[source]
        source: Option<Box<E>>,
    }

    #[test]
    fn an_error_chain_says_each_cause_once() {
        let e = E {
            msg: "tcp connect error",
            source: Some(Box::new(E {
                msg: "tcp connect error",
                source: Some(Box::new(E {
                    msg: "Connection refused (os error 111)",
                    source: None,
                })),
            })),
        };
        assert_eq!(
            super::error_chain(&e),
            "tcp connect error: Connection refused (os error 111)"
        );
    }
}
