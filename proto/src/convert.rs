//! Conversions between [`crate::pb`] and the domain types. `TryFrom<pb::X>` validates everything a
//! peer could get wrong and says what, so handlers can answer `invalid_argument` with the reason.

use bytes::{BufMut, Bytes, BytesMut};
use lbsync_chunkstore::{
    ChunkId, ChunkParams, ChunkRef, DeltaOp, Manifest, ManifestDelta, ManifestId,
};

use crate::model::{
    BatchOutcome, CommitOutcome, CommitRequest, Content, Entry, EntryKind, SameContent,
};
use crate::path::{PathError, SyncPath};
use crate::pb;

/// Why a message could not be converted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// A required field was absent.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// An id field was not 32 bytes (or a packed list not a multiple of its record size).
    #[error("field {field} has {len} bytes, expected {expected}")]
    BadLength {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// What was expected.
        expected: String,
    },
    /// A path is not acceptable.
    #[error(transparent)]
    Path(#[from] PathError),
    /// A manifest or the chunking parameters do not check out.
    #[error(transparent)]
    Domain(#[from] lbsync_chunkstore::Error),
    /// A chunk on the wire does not check out (size, compression).
    #[error("{0}")]
    BadChunk(String),
    /// A list longer than the protocol allows.
    #[error("{count} {what}, the limit is {limit}: split it")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// How many came.
        count: usize,
        /// How many are allowed.
        limit: usize,
    },
    /// An enum value this build does not know.
    #[error("unknown {field} value {value}: upgrade lbsync")]
    UnknownEnum {
        /// Which field.
        field: &'static str,
        /// The value.
        value: i32,
    },
}

/// The longest device name accepted, in bytes.
pub const MAX_DEVICE_BYTES: usize = 255;

/// The longest [`Entry::sealed`](crate::Entry::sealed) accepted, in bytes: an encrypted
/// folder's entry metadata (a symlink target of 4096 bytes and the AEAD's overhead fit).
pub const MAX_SEALED_BYTES: usize = 8192;

/// The longest an encrypted folder's chunk of at most `largest` plaintext bytes may be when
/// stored: `largest + largest * 9 / 32 + 64`, room for the client's format byte and 18 bytes (a
/// length and a 16-byte tag) for each block of at least 64 bytes (docs/PROTOCOL.md "Encrypted
/// folders"). Real data averages about 3.5%; the bound is for blocks all of the least size.
pub const fn max_sealed_chunk(largest: u32) -> u32 {
    largest + largest * 9 / 32 + 64
}

/// Checks a device name: at most [`MAX_DEVICE_BYTES`] bytes and no control characters (it is
/// shown to people, logged, and put in the names of conflicted copies).
pub fn check_device(device: &str) -> Result<(), ConvertError> {
    if device.len() > MAX_DEVICE_BYTES {
        return Err(ConvertError::BadLength {
            field: "device",
            len: device.len(),
            expected: format!("at most {MAX_DEVICE_BYTES}"),
        });
    }
    if let Some(c) = device.chars().find(|c| c.is_control()) {
        return Err(ConvertError::BadChunk(format!(
            "device name {device:?} holds the control character {c:?}: name the device without one"
        )));
    }
    Ok(())
}

fn id32(field: &'static str, b: &[u8]) -> Result<[u8; 32], ConvertError> {
    b.try_into().map_err(|_| ConvertError::BadLength {
        field,
        len: b.len(),
        expected: "32".into(),
    })
}

/// An optional id: empty bytes mean none.
fn opt_manifest_id(field: &'static str, b: &[u8]) -> Result<Option<ManifestId>, ConvertError> {
    if b.is_empty() {
        Ok(None)
    } else {
        Ok(Some(ManifestId::from_bytes(id32(field, b)?)))
    }
}

/// A manifest id field that must be set.
pub fn manifest_id(field: &'static str, b: &[u8]) -> Result<ManifestId, ConvertError> {
    opt_manifest_id(field, b)?.ok_or(ConvertError::MissingField(field))
}

/// Concatenated 32-byte ids.
pub fn ids_to_bytes<'a>(ids: impl IntoIterator<Item = &'a ChunkId>) -> Bytes {
    let mut out = BytesMut::new();
    for id in ids {
        out.put_slice(id.as_bytes());
    }
    out.freeze()
}

/// Splits concatenated 32-byte ids.
pub fn ids_from_bytes(b: &[u8]) -> Result<Vec<ChunkId>, ConvertError> {
    if !b.len().is_multiple_of(32) {
        return Err(ConvertError::BadLength {
            field: "ids",
            len: b.len(),
            expected: "a multiple of 32".into(),
        });
    }
    Ok(b.chunks_exact(32)
        .map(|c| ChunkId::from_slice(c).expect("32 bytes"))
        .collect())
}

fn refs_to_bytes(refs: &[ChunkRef]) -> Bytes {
    let mut out = BytesMut::with_capacity(refs.len() * 36);
    for r in refs {
        out.put_slice(r.id.as_bytes());
        out.put_u32_le(r.len);
    }
    out.freeze()
}

fn refs_from_bytes(b: &[u8]) -> Result<Vec<ChunkRef>, ConvertError> {
    if !b.len().is_multiple_of(36) {
        return Err(ConvertError::BadLength {
            field: "new_refs",
            len: b.len(),
            expected: "a multiple of 36".into(),
        });
    }
    Ok(b.chunks_exact(36)
        .map(|c| ChunkRef {
            id: ChunkId::from_slice(&c[..32]).expect("32 bytes"),
            len: u32::from_le_bytes(c[32..].try_into().expect("4 bytes")),
        })
        .collect())
}

impl From<ChunkParams> for pb::ChunkParams {
    fn from(p: ChunkParams) -> Self {
        Self {
            min_size: p.min_size,
            avg_size: p.avg_size,
            max_size: p.max_size,
        }
    }
}

impl TryFrom<pb::ChunkParams> for ChunkParams {
    type Error = ConvertError;

    fn try_from(p: pb::ChunkParams) -> Result<Self, ConvertError> {
        Ok(ChunkParams::new(p.min_size, p.avg_size, p.max_size)?)
    }
}

impl From<EntryKind> for pb::EntryKind {
    fn from(k: EntryKind) -> Self {
        match k {
            EntryKind::File => pb::EntryKind::File,
            EntryKind::Dir => pb::EntryKind::Dir,
            EntryKind::Symlink => pb::EntryKind::Symlink,
        }
    }
}

impl From<pb::EntryKind> for EntryKind {
    fn from(k: pb::EntryKind) -> Self {
        match k {
            pb::EntryKind::File => EntryKind::File,
            pb::EntryKind::Dir => EntryKind::Dir,
            pb::EntryKind::Symlink => EntryKind::Symlink,
        }
    }
}

impl From<Entry> for pb::Entry {
    fn from(e: Entry) -> Self {
        Self {
            path: Bytes::from(e.path.as_str().to_owned()),
            kind: pb::EntryKind::from(e.kind).into(),
            size: e.size,
            mode: e.mode,
            mtime_ns: e.mtime_ns,
            manifest_id: e
                .manifest
                .map(|m| Bytes::copy_from_slice(m.as_bytes()))
                .unwrap_or_default(),
            version: e.version,
            deleted: e.deleted,
            device: e.device,
            symlink_target: e.symlink_target.unwrap_or_default(),
            seq: e.seq,
            committed_ns: e.committed_ns,
            sealed: Bytes::from(e.sealed),
            same_content_base_ns: 0,
            raw_path: Bytes::new(),
        }
    }
}

impl pb::Entry {
    /// This entry with its path raw (`raw_path`), when the path is a sealed one (see
    /// [`crate::raw_path`]); as it is otherwise.
    pub fn with_raw_path(mut self) -> Self {
        if let Some(raw) = std::str::from_utf8(&self.path)
            .ok()
            .and_then(crate::raw_path::to_raw)
        {
            self.raw_path = raw.into();
            self.path = Bytes::new();
        }
        self
    }
}

impl TryFrom<pb::Entry> for Entry {
    type Error = ConvertError;

    fn try_from(e: pb::Entry) -> Result<Self, ConvertError> {
        let kind = pb::EntryKind::try_from(e.kind).map_err(|_| ConvertError::UnknownEnum {
            field: "kind",
            value: e.kind,
        })?;
        check_device(&e.device)?;
        if e.symlink_target.len() > crate::path::MAX_PATH_BYTES {
            return Err(ConvertError::BadLength {
                field: "symlink_target",
                len: e.symlink_target.len(),
                expected: format!("at most {}", crate::path::MAX_PATH_BYTES),
            });
        }
        if e.sealed.len() > MAX_SEALED_BYTES {
            return Err(ConvertError::BadLength {
                field: "sealed",
                len: e.sealed.len(),
                expected: format!("at most {MAX_SEALED_BYTES}"),
            });
        }
        let path = if e.path.is_empty() && !e.raw_path.is_empty() {
            SyncPath::new(crate::raw_path::from_raw(&e.raw_path)?)?
        } else {
            SyncPath::from_bytes(&e.path)?
        };
        Ok(Self {
            path,
            kind: kind.into(),
            size: e.size,
            mode: e.mode,
            mtime_ns: e.mtime_ns,
            manifest: opt_manifest_id("manifest_id", &e.manifest_id)?,
            version: e.version,
            deleted: e.deleted,
            device: e.device,
            symlink_target: Some(e.symlink_target).filter(|t| !t.is_empty()),
            seq: e.seq,
            committed_ns: e.committed_ns,
            sealed: e.sealed.to_vec(),
        })
    }
}

/// A delta and the manifest it applies to.
pub fn delta_to_pb(base: &ManifestId, d: &ManifestDelta) -> pb::ManifestDelta {
    pb::ManifestDelta {
        base_manifest_id: Bytes::copy_from_slice(base.as_bytes()),
        ops: d
            .ops
            .iter()
            .map(|op| pb::DeltaOp {
                op: Some(match op {
                    DeltaOp::Copy { start, count } => pb::delta_op::Op::Copy(pb::CopyRun {
                        start: *start,
                        count: *count,
                    }),
                    DeltaOp::New(refs) => pb::delta_op::Op::NewRefs(refs_to_bytes(refs)),
                }),
            })
            .collect(),
    }
}

/// The base manifest id and the delta.
pub fn delta_from_pb(d: &pb::ManifestDelta) -> Result<(ManifestId, ManifestDelta), ConvertError> {
    let base = manifest_id("base_manifest_id", &d.base_manifest_id)?;
    let ops = d
        .ops
        .iter()
        .map(|op| match &op.op {
            Some(pb::delta_op::Op::Copy(c)) => Ok(DeltaOp::Copy {
                start: c.start,
                count: c.count,
            }),
            Some(pb::delta_op::Op::NewRefs(b)) => Ok(DeltaOp::New(refs_from_bytes(b)?)),
            None => Err(ConvertError::MissingField("delta op")),
        })
        .collect::<Result<_, _>>()?;
    Ok((base, ManifestDelta { ops }))
}

impl From<CommitRequest> for pb::CommitRequest {
    fn from(r: CommitRequest) -> Self {
        Self {
            folder: r.folder,
            entry: Some(r.entry.into()),
            base_version: r.base_version,
            content: r.content.map(|c| match c {
                Content::Known(id) => {
                    pb::commit_request::Content::ManifestId(Bytes::copy_from_slice(id.as_bytes()))
                }
                Content::Full(m) => pb::commit_request::Content::Manifest(m.encode().into()),
                Content::Delta { base, delta } => {
                    pb::commit_request::Content::Delta(delta_to_pb(&base, &delta))
                }
                Content::Same(s) => pb::commit_request::Content::SameContent(pb::SameContent {
                    mode: s.mode,
                    mtime_ns: s.mtime_ns,
                }),
            }),
            brief_answer: false,
        }
    }
}

impl TryFrom<pb::CommitRequest> for CommitRequest {
    type Error = ConvertError;

    fn try_from(r: pb::CommitRequest) -> Result<Self, ConvertError> {
        let entry = r
            .entry
            .ok_or(ConvertError::MissingField("entry"))?
            .try_into()?;
        let content = r
            .content
            .map(|c| -> Result<Content, ConvertError> {
                Ok(match c {
                    pb::commit_request::Content::ManifestId(id) => {
                        Content::Known(manifest_id("manifest_id", &id)?)
                    }
                    pb::commit_request::Content::Manifest(m) => {
                        Content::Full(Manifest::decode(&m)?)
                    }
                    pb::commit_request::Content::Delta(d) => {
                        let (base, delta) = delta_from_pb(&d)?;
                        Content::Delta { base, delta }
                    }
                    pb::commit_request::Content::SameContent(s) => Content::Same(SameContent {
                        mode: s.mode,
                        mtime_ns: s.mtime_ns,
                    }),
                })
            })
            .transpose()?;
        Ok(Self {
            folder: r.folder,
            entry,
            base_version: r.base_version,
            content,
        })
    }
}

impl From<CommitOutcome> for pb::CommitResponse {
    fn from(o: CommitOutcome) -> Self {
        Self {
            result: Some(match o {
                CommitOutcome::Committed(e) => pb::commit_response::Result::Committed(e.into()),
                CommitOutcome::Conflict(e) => pb::commit_response::Result::Conflict(pb::Conflict {
                    current: Some(e.into()),
                }),
            }),
        }
    }
}

impl TryFrom<pb::CommitResponse> for CommitOutcome {
    type Error = ConvertError;

    fn try_from(r: pb::CommitResponse) -> Result<Self, ConvertError> {
        match r.result.ok_or(ConvertError::MissingField("result"))? {
            pb::commit_response::Result::Committed(e) => {
                Ok(CommitOutcome::Committed(e.try_into()?))
            }
            pb::commit_response::Result::Conflict(c) => Ok(CommitOutcome::Conflict(
                c.current
                    .ok_or(ConvertError::MissingField("current"))?
                    .try_into()?,
            )),
            // Only the request it answers holds the entry: read it with that request.
            pb::commit_response::Result::Brief(_) => Err(ConvertError::MissingField("committed")),
        }
    }
}

/// The most commits one CommitBatch may carry.
pub const MAX_BATCH_COMMITS: usize = 4096;

/// A batch of commits to one folder by one device, as sent: the folder and device once, not
/// per entry.
pub fn batch_to_pb(
    folder: &str,
    device: &str,
    commits: Vec<CommitRequest>,
) -> pb::CommitBatchRequest {
    pb::CommitBatchRequest {
        folder: folder.to_owned(),
        device: device.to_owned(),
        commits: commits
            .into_iter()
            .map(|c| {
                let mut c = pb::CommitRequest::from(c);
                c.folder.clear();
                if let Some(e) = c.entry.as_mut().filter(|e| e.device == device) {
                    e.device.clear();
                }
                c
            })
            .collect(),
    }
}

/// A received batch: each commit with the batch's folder, and its device where it names none.
pub fn batch_from_pb(b: pb::CommitBatchRequest) -> Result<Vec<CommitRequest>, ConvertError> {
    if b.commits.len() > MAX_BATCH_COMMITS {
        return Err(ConvertError::TooMany {
            what: "commits in one CommitBatch",
            count: b.commits.len(),
            limit: MAX_BATCH_COMMITS,
        });
    }
    b.commits
        .into_iter()
        .map(|mut c| {
            c.folder.clone_from(&b.folder);
            if let Some(e) = c.entry.as_mut().filter(|e| e.device.is_empty()) {
                e.device.clone_from(&b.device);
            }
            CommitRequest::try_from(c)
        })
        .collect()
}

impl From<BatchOutcome> for pb::CommitResult {
    fn from(o: BatchOutcome) -> Self {
        use pb::commit_result::Result as R;
        let refused = |reason: pb::Refusal, message: String, missing: &[ChunkId]| {
            R::Refused(pb::Refused {
                reason: reason.into(),
                message,
                missing_ids: ids_to_bytes(missing),
            })
        };
        Self {
            result: Some(match o {
                BatchOutcome::Committed {
                    version,
                    seq,
                    committed_ns,
                } => R::Committed(pb::Committed {
                    version,
                    seq,
                    committed_ns,
                }),
                BatchOutcome::Conflict(e) => R::Conflict(pb::Conflict {
                    current: Some(e.into()),
                }),
                BatchOutcome::MissingChunks(ids) => refused(
                    pb::Refusal::MissingChunks,
                    format!("{} chunks are not on the server", ids.len()),
                    &ids,
                ),
                BatchOutcome::UnknownManifest(m) => refused(pb::Refusal::UnknownManifest, m, &[]),
                BatchOutcome::Invalid(m) => refused(pb::Refusal::Invalid, m, &[]),
                BatchOutcome::NotAttempted(m) => refused(pb::Refusal::NotAttempted, m, &[]),
            }),
        }
    }
}

impl TryFrom<pb::CommitResult> for BatchOutcome {
    type Error = ConvertError;

    fn try_from(r: pb::CommitResult) -> Result<Self, ConvertError> {
        use pb::commit_result::Result as R;
        Ok(
            match r.result.ok_or(ConvertError::MissingField("result"))? {
                R::Committed(c) => BatchOutcome::Committed {
                    version: c.version,
                    seq: c.seq,
                    committed_ns: c.committed_ns,
                },
                R::Conflict(c) => BatchOutcome::Conflict(
                    c.current
                        .ok_or(ConvertError::MissingField("current"))?
                        .try_into()?,
                ),
                R::Refused(r) => match pb::Refusal::try_from(r.reason) {
                    Ok(pb::Refusal::MissingChunks) => {
                        BatchOutcome::MissingChunks(ids_from_bytes(&r.missing_ids)?)
                    }
                    Ok(pb::Refusal::UnknownManifest) => BatchOutcome::UnknownManifest(r.message),
                    Ok(pb::Refusal::Invalid) => BatchOutcome::Invalid(r.message),
                    Ok(pb::Refusal::NotAttempted) => BatchOutcome::NotAttempted(r.message),
                    Err(_) => {
                        return Err(ConvertError::UnknownEnum {
                            field: "reason",
                            value: r.reason,
                        });
                    }
                },
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(n: u8) -> Vec<ChunkRef> {
        (0..n)
            .map(|i| ChunkRef {
                id: ChunkId::of(&[i]),
                len: 1000 + u32::from(i),
            })
            .collect()
    }

    #[test]
    fn commit_round_trips_for_every_content() {
        let base = Manifest::new(refs(10));
        let new = Manifest::new(refs(12));
        let path = SyncPath::new("a/b.txt").unwrap();
        for content in [
            None,
            Some(Content::Known(base.id())),
            Some(Content::Full(new.clone())),
            Some(Content::Delta {
                base: base.id(),
                delta: ManifestDelta::diff(&base, &new),
            }),
        ] {
            let req = CommitRequest {
                folder: "default".into(),
                entry: Entry::file(path.clone(), &new, "laptop"),
                base_version: 3,
                content,
            };
            let back = CommitRequest::try_from(pb::CommitRequest::from(req.clone())).unwrap();
            assert_eq!(back, req);
        }
    }

    #[test]
    fn masked_manifests_and_deltas_cross_the_wire_for_both_sides() {
        let mask = lbsync_chunkstore::LengthMask::new([5; 32]);
        let base = Manifest::new(refs(10)).masked(mask.clone());
        let new = Manifest::new(refs(12)).masked(mask.clone());
        let path = SyncPath::new("x").unwrap();
        let commit = |content| {
            let req = CommitRequest {
                folder: "f".into(),
                entry: Entry::file(path.clone(), &new, "d"),
                base_version: 1,
                content: Some(content),
            };
            CommitRequest::try_from(pb::CommitRequest::from(req)).unwrap()
        };
        // A full manifest: the server decodes the masked encoding as is (same bytes, same id).
        match commit(Content::Full(new.clone())).content {
            Some(Content::Full(m)) => {
                assert_eq!(m.encode(), new.encode());
                assert_eq!(m.id(), new.id());
            }
            other => panic!("{other:?}"),
        }
        // A delta: the server applies it to its base (decoded without the mask) and gets the
        // client's manifest byte for byte; a client applies it to its masked base and gets the
        // real lengths.
        let delta = ManifestDelta::diff(&base, &new);
        let server_base = Manifest::decode(&base.encode()).unwrap();
        match commit(Content::Delta {
            base: base.id(),
            delta: delta.clone(),
        })
        .content
        {
            Some(Content::Delta { base: b, delta: d }) => {
                assert_eq!(b, base.id());
                assert_eq!(d.apply(&server_base).unwrap().id(), new.id());
            }
            other => panic!("{other:?}"),
        }
        let (_, received) = delta_from_pb(&delta_to_pb(&base.id(), &delta)).unwrap();
        assert_eq!(received.apply(&base).unwrap(), new);
    }

    #[test]
    fn batches_carry_folder_and_device_once_and_round_trip() {
        let m = Manifest::new(refs(3));
        let req = |p: &str, device: &str| CommitRequest {
            folder: "f".into(),
            entry: Entry::file(SyncPath::new(p).unwrap(), &m, device),
            base_version: 1,
            content: Some(Content::Known(m.id())),
        };
        let sent = vec![req("a", "laptop#1"), req("b", "other#2")];
        let wire = batch_to_pb("f", "laptop#1", sent.clone());
        assert!(wire.commits.iter().all(|c| c.folder.is_empty()));
        assert_eq!(wire.commits[0].entry.as_ref().unwrap().device, "");
        assert_eq!(wire.commits[1].entry.as_ref().unwrap().device, "other#2");
        assert_eq!(batch_from_pb(wire).unwrap(), sent);

        let too_many = pb::CommitBatchRequest {
            commits: vec![pb::CommitRequest::default(); MAX_BATCH_COMMITS + 1],
            ..Default::default()
        };
        let err = batch_from_pb(too_many).unwrap_err().to_string();
        assert!(err.contains("4097 commits in one CommitBatch"), "{err}");

        for o in [
            BatchOutcome::Committed {
                version: 3,
                seq: 9,
                committed_ns: 7,
            },
            BatchOutcome::Conflict(Entry::dir(SyncPath::new("d").unwrap(), "x")),
            BatchOutcome::MissingChunks(vec![ChunkId::of(b"1")]),
            BatchOutcome::UnknownManifest("manifest m is not on the server".into()),
            BatchOutcome::Invalid("bad".into()),
            BatchOutcome::NotAttempted("the disk is full".into()),
        ] {
            assert_eq!(
                BatchOutcome::try_from(pb::CommitResult::from(o.clone())).unwrap(),
                o
            );
        }
    }

    #[test]
    fn bad_wire_values_are_named() {
        let mut e = pb::Entry::from(Entry::dir(SyncPath::new("x").unwrap(), "d"));
        e.manifest_id = Bytes::from_static(&[1, 2, 3]);
        let err = Entry::try_from(e.clone()).unwrap_err().to_string();
        assert!(err.contains("manifest_id has 3 bytes"), "{err}");
        e.manifest_id = Bytes::new();
        e.path = Bytes::from_static(b"../up");
        assert!(matches!(
            Entry::try_from(e.clone()),
            Err(ConvertError::Path(_))
        ));
        e.path = Bytes::from_static(b"ok");
        e.kind = 17;
        assert!(
            Entry::try_from(e)
                .unwrap_err()
                .to_string()
                .contains("unknown kind")
        );
        assert!(ids_from_bytes(&[0; 33]).is_err());
        let ids = [ChunkId::of(b"1"), ChunkId::of(b"2")];
        assert_eq!(ids_from_bytes(&ids_to_bytes(&ids)).unwrap(), ids);
    }
}
