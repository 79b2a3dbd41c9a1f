//! Moving one path each way: uploading a local file's new chunks and committing it, downloading a
//! server version into place.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use lbsync_chunkstore::{ChunkId, ChunkRef, CompressProbe, Manifest, ManifestDelta, edit_bases};
use lbsync_cli::units::count;
use lbsync_proto::wire::{MAX_DELTA_BASES, encode_chunk_against};
use lbsync_proto::{
    BatchOutcome, CommitOutcome, CommitRequest, Content, Entry, EntryKind, SameContent, SyncPath,
    pb,
};
use tracing::{info, warn};

use crate::cache::CACHED_FILE_MAX;
use crate::codec::Piece;
use crate::confine;
use crate::engine::Syncer;
use crate::error::{Error, Result};
use crate::local::{fingerprint, key, same_file, unchanged};
use crate::place;
use crate::remote::{Committed, DeltaBases, Remote};
use crate::state::{Fingerprint, Kind, Synced};

/// Chunks go to the server in messages of about this size on the wire, and of at most about this
/// many bytes once decompressed (the server refuses messages declaring over 64 MiB).
const PUT_MESSAGE_BYTES: usize = 1 << 20;
const PUT_MESSAGE_RAW_BYTES: usize = 16 << 20;
/// Chunks are checked against the server in batches of at most this many chunks and about this
/// many bytes (a batch of a very large file's 1 MiB chunks would otherwise hold half a gigabyte).
const MISSING_BATCH: usize = 512;
const MISSING_BATCH_BYTES: usize = 4 << 20;
/// A download offers delta bases (read from local files) only when they total at most this.
const DOWNLOAD_BASE_BYTES: u64 = 16 << 20;
/// Chunks are downloaded in windows of at most this many chunks and about this many bytes.
const DOWNLOAD_WINDOW: usize = 1024;
const DOWNLOAD_WINDOW_BYTES: u64 = 8 << 20;

/// What an upload came to.
pub(crate) enum Uploaded {
    /// Committed.
    Done,
    /// The server has a newer version; nothing changed there.
    Conflict(Entry),
    /// The file changed while it was read, or vanished: try again later.
    NotSettled,
}

/// A file's chunks as pushed: its manifest and what it cost.
struct Pushed {
    manifest: Manifest,
    chunks_sent: u64,
    bytes_sent: u64,
}

/// A byte progress bar that appears only once a transfer has taken over two seconds, and only
/// when stdout is a terminal.
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    shown: bool,
}

impl Progress {
    pub(crate) fn new(len: u64, what: String) -> Self {
        use std::io::IsTerminal;
        let bar = std::io::stdout().is_terminal().then(|| {
            // indicatif's own {bytes} are binary (MiB) and its {decimal_bytes} say "kB": the
            // bar prints with the summary's function instead, so both read "41.2 KB".
            let style = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {done}/{total} {rate} eta {eta}",
            )
            .map(|s| {
                s.with_key(
                    "done",
                    |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = w.write_str(&human(st.pos()));
                    },
                )
                .with_key(
                    "total",
                    |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = w.write_str(&human(st.len().unwrap_or(0)));
                    },
                )
                .with_key(
                    "rate",
                    |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = w.write_str(&format!("{}/s", human(st.per_sec() as u64)));
                    },
                )
            })
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            indicatif::ProgressBar::with_draw_target(
                Some(len),
                indicatif::ProgressDrawTarget::hidden(),
            )
            .with_style(style)
            .with_message(what)
        });
        Self { bar, shown: false }
    }

    pub(crate) fn inc(&mut self, bytes: u64) {
        let Some(bar) = &self.bar else { return };
        bar.inc(bytes);
        if !self.shown && bar.elapsed() > std::time::Duration::from_secs(2) {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stdout());
            self.shown = true;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Bytes in words, decimal: "41.2 KB" (the one unit system of both binaries, see
/// [`lbsync_cli::units::bytes`]).
pub fn human(bytes: u64) -> String {
    lbsync_cli::units::bytes(bytes)
}

/// One PutChunks call fed chunk by chunk, in messages bounded on the wire and decompressed;
/// opened with the first chunk.
struct Puts {
    call: Option<(
        tokio::sync::mpsc::Sender<pb::PutChunksRequest>,
        tokio::task::JoinHandle<Result<pb::PutChunksResponse>>,
    )>,
    msg: pb::PutChunksRequest,
    msg_bytes: usize,
    msg_raw: usize,
    /// Each message's uncompressed chunks go as one zstd frame (`PutChunksRequest.together`).
    together: bool,
    /// Encoded bytes handed to the call.
    sent: u64,
}

/// A message of chunks compressed together holds about this many of their bytes: the frame's
/// window spans them all.
const TOGETHER_MESSAGE_BYTES: usize = 16 << 20;

impl Puts {
    fn new() -> Self {
        Self {
            call: None,
            msg: pb::PutChunksRequest::default(),
            msg_bytes: 0,
            msg_raw: 0,
            together: false,
            sent: 0,
        }
    }

    /// A call whose messages compress their uncompressed chunks together: for a server whose
    /// handshake says `chunks_together`, and chunks sent with [`lbsync_proto::wire::raw_chunk`].
    fn together() -> Self {
        Self {
            together: true,
            ..Self::new()
        }
    }

    /// Queues a chunk. False when the call has ended early (`finish` says why).
    async fn push(&mut self, remote: &Remote, wire: pb::ChunkData) -> bool {
        self.msg_bytes += wire.data.len();
        self.msg_raw += wire.raw_len as usize;
        self.msg.chunks.push(wire);
        let full = if self.together {
            TOGETHER_MESSAGE_BYTES
        } else {
            PUT_MESSAGE_BYTES
        };
        if self.msg_bytes >= full || self.msg_raw >= PUT_MESSAGE_RAW_BYTES {
            return self.flush(remote).await;
        }
        true
    }

    async fn flush(&mut self, remote: &Remote) -> bool {
        if self.msg.chunks.is_empty() {
            return true;
        }
        if self.together {
            // Compressing is CPU work: off the runtime's threads.
            let mut msg = std::mem::take(&mut self.msg);
            msg = match tokio::task::spawn_blocking(move || {
                // Left as it is when it does not pay (or, never seen, zstd fails).
                let _ = lbsync_proto::wire::pack_together(&mut msg);
                msg
            })
            .await
            {
                Ok(m) => m,
                Err(_) => return false,
            };
            self.msg = msg;
        }
        let sender = &self.call.get_or_insert_with(|| remote.put_chunks()).0;
        self.sent += prost::Message::encoded_len(&self.msg) as u64;
        (self.msg_bytes, self.msg_raw) = (0, 0);
        sender.send(std::mem::take(&mut self.msg)).await.is_ok()
    }

    /// Sends what is queued and waits for the server's answer; returns the bytes sent.
    async fn finish(mut self, remote: &Remote) -> Result<u64> {
        self.flush(remote).await;
        if let Some((sender, handle)) = self.call {
            drop(sender);
            handle
                .await
                .map_err(|e| Error::Usage(format!("upload task failed: {e}")))??;
        }
        Ok(self.sent)
    }
}

/// Files up to this size are uploaded together ([`Syncer::upload_small_files`]).
pub(crate) const SMALL_FILE: u64 = CACHED_FILE_MAX;

/// A download written to its temp file, not yet in place.
pub(crate) struct StagedDownload {
    tmp: PathBuf,
    manifest: Manifest,
    fetched: u64,
    local_chunks: u64,
}
/// A batch of small files holds at most this many files and about this many bytes.
const SMALL_BATCH_FILES: usize = 1024;
const SMALL_BATCH_BYTES: u64 = 16 << 20;

/// A small file read and chunked for a batch upload.
struct Staged {
    path: SyncPath,
    base_version: u64,
    before: Fingerprint,
    chunks: Vec<Piece>,
    manifest: Manifest,
    /// The manifest last synced at this path, if cached.
    synced: Option<Manifest>,
    /// Chunks and bytes sent for it.
    chunks_sent: u64,
    bytes_sent: u64,
    /// How many of those went as deltas.
    deltas: u64,
}

impl Syncer {
    /// Chunks `local`, sends the chunks the server lacks, and returns the manifest. Chunks of
    /// synced files are known to be on the server and are not even asked about, unless
    /// `trust_index` is false (after the server said it lacks some).
    async fn push_chunks(
        &mut self,
        local: &Path,
        trust_index: bool,
        old: Option<&Manifest>,
    ) -> Result<Pushed> {
        let file =
            fs::File::open(local).map_err(Error::io(format!("reading {}", local.display())))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut progress = Progress::new(len, format!("sending {}", local.display()));
        let params = self.remote.params.for_file(len);
        let codec = self.remote.codec().clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Piece>>(2);
        let reader = tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(MISSING_BATCH);
            let mut batch_bytes = 0;
            lbsync_chunkstore::cut_pipelined::<_, Error>(file, params, |p| {
                batch_bytes += p.data.len();
                batch.push(p.data);
                if batch.len() == MISSING_BATCH || batch_bytes >= MISSING_BATCH_BYTES {
                    batch_bytes = 0;
                    let pieces = codec.pieces(std::mem::take(&mut batch));
                    tx.blocking_send(pieces)
                        .map_err(|_| Error::Usage("upload abandoned".into()))?;
                }
                Ok(())
            })?;
            if !batch.is_empty() {
                let _ = tx.blocking_send(codec.pieces(batch));
            }
            Ok::<(), Error>(())
        });
        // Sized for the file up front: doubling a multi-GB file's list would briefly hold it twice.
        let mut refs = Vec::with_capacity((len / u64::from(params.avg_size) + 16) as usize);
        let mut puts = Puts::new();
        // Chunks already queued in this upload, by 64-bit id prefix: a repeat (a file of zeros
        // is one chunk many times) goes once, even before the server has it to say so.
        let mut sent: HashSet<u64> = HashSet::new();
        let mut chunks_sent = 0u64;
        let mut probe = CompressProbe::default();
        let cache_them = len <= CACHED_FILE_MAX;
        // Block deltas against the synced version's chunks the server holds: plain folders only.
        let mut bases = old
            .filter(|_| self.remote.block_deltas && !self.remote.codec().is_sealed())
            .map(OldChunks::new);
        'batches: while let Some(batch) = rx.recv().await {
            progress.inc(batch.iter().map(|c| c.len() as u64).sum());
            let first_ref = refs.len();
            refs.extend(batch.iter().map(Piece::chunk_ref));
            if cache_them {
                for c in &batch {
                    self.cache.put(&c.id(), c.stored());
                }
            }
            // Deduplicated within the batch only: a set over the whole file would grow with it
            // (a repeat in a later batch is asked again; the server stores it once anyway).
            let mut asked: HashSet<ChunkId> = HashSet::with_capacity(batch.len());
            let ask: Vec<ChunkId> = batch
                .iter()
                .map(Piece::id)
                .filter(|id| !(trust_index && self.index.contains(id)))
                .filter(|id| !sent.contains(&key(id)))
                .filter(|id| asked.insert(*id))
                .collect();
            if ask.is_empty() {
                continue;
            }
            let mut missing: HashSet<ChunkId> =
                self.remote.missing(&ask).await?.into_iter().collect();
            let candidates = match &mut bases {
                Some(o) => o.candidates(&refs[first_ref..], &missing),
                None => vec![Vec::new(); batch.len()],
            };
            let sigs = self.signatures_of(&candidates, &mut bases).await;
            for (c, cands) in batch.iter().zip(&candidates) {
                if !missing.remove(&c.id()) {
                    continue;
                }
                sent.insert(key(&c.id()));
                chunks_sent += 1;
                let mut wire = c.wire(&mut probe);
                let found: Option<Vec<lbsync_chunkstore::Signature>> =
                    cands.iter().map(|b| sigs.get(b).cloned()).collect();
                if let Some(found) = found.filter(|f| !f.is_empty())
                    && let Some(d) =
                        block_delta_of(c.id(), c.stored(), cands, found, wire.data.len()).await
                {
                    wire = d;
                }
                if !puts.push(&self.remote, wire).await {
                    break 'batches;
                }
            }
        }
        // An early end leaves the chunking thread waiting to send: release it first.
        drop(rx);
        let bytes_sent = puts.finish(&self.remote).await?;
        self.remote.sent += bytes_sent;
        reader
            .await
            .map_err(|e| Error::Usage(format!("chunking thread failed: {e}")))??;
        Ok(Pushed {
            manifest: self.remote.codec().manifest(refs),
            chunks_sent,
            bytes_sent,
        })
    }

    /// The signatures of the candidate bases of one batch, by id; none (and block deltas off for
    /// the rest of the file) when the server cannot say.
    async fn signatures_of(
        &mut self,
        candidates: &[Vec<ChunkId>],
        bases: &mut Option<OldChunks>,
    ) -> HashMap<ChunkId, lbsync_chunkstore::Signature> {
        let mut ids: Vec<ChunkId> = Vec::new();
        let mut seen = HashSet::new();
        for id in candidates.iter().flatten() {
            if seen.insert(*id) && ids.len() < self.remote.max_ids() {
                ids.push(*id);
            }
        }
        if ids.is_empty() {
            return HashMap::new();
        }
        match self.remote.signatures(&ids).await {
            Ok(sigs) => ids
                .into_iter()
                .zip(sigs)
                .filter_map(|(id, s)| s.map(|s| (id, s)))
                .collect(),
            Err(e) => {
                warn!("no block signatures from the server ({e}): sending edited chunks whole");
                *bases = None;
                HashMap::new()
            }
        }
    }

    /// Uploads a local file and commits it on `base_version`.
    pub(crate) async fn upload_file(
        &mut self,
        path: &SyncPath,
        base_version: u64,
    ) -> Result<Uploaded> {
        let local = confine::check(&self.root, path)?;
        let base = self.synced_manifest(path);
        let mut trust_index = true;
        let mut full = false;
        let mut deltas = true;
        for _attempt in 0..3 {
            let Some(before) = fingerprint(&local).filter(|f| f.kind == Kind::File) else {
                return Ok(Uploaded::NotSettled);
            };
            let old = base.as_ref().filter(|_| deltas);
            let pushed = match self.push_chunks(&local, trust_index, old).await {
                Ok(p) => p,
                // A refused block delta (a base gone, a false block match): send chunks whole.
                Err(e) if old.is_some() && !e.is_offline() => {
                    warn!("uploading {path} with block deltas failed ({e}): sending it whole");
                    deltas = false;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if fingerprint(&local).as_ref() != Some(&before) {
                return Ok(Uploaded::NotSettled);
            }
            let m = &pushed.manifest;
            let req = self.file_commit(path, base_version, &before, m, base.as_ref(), full);
            match self.commit(req).await? {
                Committed::Outcome(CommitOutcome::Committed(e)) => {
                    self.saw_commit(e.seq, path, e.version, e.committed_ns);
                    info!(
                        "uploaded {path}: {} of {} new, {} sent",
                        pushed.chunks_sent,
                        count(m.chunks().len() as u64, "chunk"),
                        human(pushed.bytes_sent)
                    );
                    self.report.chunks_sent += pushed.chunks_sent;
                    self.record_file(path, (e.version, e.seq, e.committed_ns), m, before)?;
                    return Ok(Uploaded::Done);
                }
                Committed::Outcome(CommitOutcome::Conflict(cur)) => {
                    return Ok(Uploaded::Conflict(cur));
                }
                Committed::MissingChunks(_) => trust_index = false,
                Committed::UnknownManifest => full = true,
            }
        }
        Err(Error::Usage(format!(
            "the server kept refusing {path}'s chunks; run `lbsync-server fsck` on the server"
        )))
    }

    /// The commit of a file's new content `m` on `base_version`: a manifest the server has by id,
    /// else a delta against the synced one `base`, else (or when `full`) the whole manifest.
    fn file_commit(
        &self,
        path: &SyncPath,
        base_version: u64,
        before: &Fingerprint,
        m: &Manifest,
        base: Option<&Manifest>,
        full: bool,
    ) -> CommitRequest {
        if let Some(same) = (!full)
            .then(|| self.same_content(path, base_version, before, m))
            .flatten()
        {
            return CommitRequest {
                folder: self.remote.folder.clone(),
                entry: Entry::new(path.clone(), EntryKind::File, &self.device),
                base_version,
                content: Some(Content::Same(same)),
            };
        }
        let content = if !full
            && (self.index.has_manifest(&m.id()) || base.is_some_and(|b| b.id() == m.id()))
        {
            Content::Known(m.id())
        } else {
            match base.filter(|_| !full) {
                Some(b) => Content::Delta {
                    base: b.id(),
                    delta: ManifestDelta::diff(b, m),
                },
                None => Content::Full(m.clone()),
            }
        };
        // The content names the manifest, and the server fills the entry's id in from it; an
        // encrypted folder's sealed metadata names it too.
        let entry = Entry {
            size: m.size(),
            mode: before.mode,
            mtime_ns: before.mtime_ns,
            manifest: self.remote.codec().is_sealed().then(|| m.id()),
            ..Entry::new(path.clone(), EntryKind::File, &self.device)
        };
        CommitRequest {
            folder: self.remote.folder.clone(),
            entry,
            base_version,
            content: Some(content),
        }
    }

    /// What a metadata-only commit of `path` on `base_version` would change, when it can be one:
    /// the content `m` is the synced version's, that version is the base, the server takes such
    /// commits, and the folder is not encrypted (whose metadata travels sealed, so the server
    /// could not apply a change to it: there the manifest id is committed with a new sealed
    /// entry, which costs no chunk and no manifest either). The file's mode and mtime are sent.
    fn same_content(
        &self,
        path: &SyncPath,
        base_version: u64,
        before: &Fingerprint,
        m: &Manifest,
    ) -> Option<SameContent> {
        if !self.remote.same_content || self.remote.codec().is_sealed() || base_version == 0 {
            return None;
        }
        let s = self.state.state.files.get(path.as_str())?;
        if s.version != base_version || s.manifest_id() != Some(m.id()) {
            return None;
        }
        // Both, always: the server's may differ from what was synced here (a mode adopted from
        // the server as it was, which the file here does not have).
        Some(SameContent {
            mode: Some(before.mode),
            mtime_ns: Some(before.mtime_ns),
        })
    }

    /// Applies a server version whose content is the synced one's (a metadata-only change:
    /// mode, mtime) in place: the same file, its bytes not rewritten, when the file here is
    /// still exactly what was synced (checked on the open file, so a file swapped in meanwhile
    /// is not the one changed). Returns false when it is not such a change or the file here
    /// moved on: then it is downloaded as any version, which keeps a changed file as a
    /// conflicted copy.
    pub(crate) fn apply_metadata(&mut self, r: &Entry) -> Result<bool> {
        let Some(s) = self.state.state.files.get(r.path.as_str()) else {
            return Ok(false);
        };
        if s.local.kind != Kind::File || r.manifest.is_none() || s.manifest_id() != r.manifest {
            return Ok(false);
        }
        let synced = s.local.clone();
        let dest = confine::check(&self.root, &r.path)?;
        // Not through a symlink at the path's end (one put there since the scan): the fd must
        // be the synced file here, never one elsewhere.
        let Ok(file) = crate::state::open_nofollow(&dest) else {
            return Ok(false);
        };
        // The open file is the synced one: the path still names it, and it is unchanged.
        let same_inode = file
            .metadata()
            .is_ok_and(|md| md.is_file() && md.ino() == synced.inode && md.dev() == synced.dev);
        if !same_inode || fingerprint(&dest).is_none_or(|now| !unchanged(&now, &synced)) {
            return Ok(false);
        }
        // A peer's setuid, setgid and sticky bits are never applied.
        let mode = if r.mode == 0 { 0o644 } else { r.mode & 0o777 };
        let set = || -> std::io::Result<()> {
            if synced.mode & 0o7777 != mode {
                file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
            }
            if r.mtime_ns > 0 && r.mtime_ns != synced.mtime_ns {
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(r.mtime_ns as u64);
                file.set_modified(t)?;
            }
            Ok(())
        };
        set().map_err(Error::io(format!(
            "setting mode and time of {}",
            dest.display()
        )))?;
        drop(file);
        // Taken after the change: its ctime is now, so the next scan hashes it again (racy),
        // and a write that landed in between is still seen.
        let local = fingerprint(&dest)
            .ok_or_else(|| Error::Usage(format!("{} vanished", dest.display())))?;
        info!(
            "applied {}'s new mode and time from {} in place",
            r.path,
            display_device(&r.device)
        );
        self.report.in_place += 1;
        self.state.state.files.insert(
            r.path.as_str().to_owned(),
            Synced {
                seq: r.seq,
                committed_ns: r.committed_ns,
                ..Synced::new(r.version, r.manifest, local)
            },
        );
        Ok(true)
    }

    /// The manifest last synced at `path`, if cached.
    fn synced_manifest(&self, path: &SyncPath) -> Option<Manifest> {
        self.state
            .state
            .files
            .get(path.as_str())
            .and_then(Synced::manifest_id)
            .and_then(|id| self.state.manifest(&id))
    }

    /// Uploads small files together: their new chunks in one PutChunks call (an edited chunk as
    /// a delta against the chunks it replaced, when the cache holds them), their commits in one
    /// CommitBatch, so a sync that touched many small files pays a few round trips, not three
    /// per file. Returns what is left for [`Syncer::upload`] to take one at a time: directories,
    /// links, large files, conflicts, refusals, files that changed while read. When the server
    /// is unreachable, the files are left pending instead.
    pub(crate) async fn upload_small_files(
        &mut self,
        files: Vec<(SyncPath, u64)>,
    ) -> Vec<(SyncPath, u64)> {
        let mut rest = Vec::new();
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut offline: Option<Error> = None;
        for (path, base) in files {
            if let Some(e) = &offline {
                self.pending(&path, e);
                continue;
            }
            match self.stage(&path, base) {
                Some(s) => {
                    bytes += s.manifest.size();
                    batch.push(s);
                }
                None => rest.push((path, base)),
            }
            if batch.len() >= SMALL_BATCH_FILES || bytes >= SMALL_BATCH_BYTES {
                bytes = 0;
                offline = self.send_batch(std::mem::take(&mut batch), &mut rest).await;
            }
        }
        if !batch.is_empty() && offline.is_none() {
            self.send_batch(batch, &mut rest).await;
        }
        rest
    }

    /// Uploads one batch of staged files, adding what is left over to `rest`. Returns the error
    /// when the server is unreachable (the batch's files are then pending).
    async fn send_batch(
        &mut self,
        batch: Vec<Staged>,
        rest: &mut Vec<(SyncPath, u64)>,
    ) -> Option<Error> {
        let paths: Vec<(SyncPath, u64)> = batch
            .iter()
            .map(|s| (s.path.clone(), s.base_version))
            .collect();
        match self.upload_staged(batch).await {
            Ok(left) => rest.extend(left),
            Err(e) if e.is_offline() => {
                for (path, _) in &paths {
                    self.pending(path, &e);
                }
                self.save_quietly();
                return Some(e);
            }
            Err(e) => {
                warn!(
                    "uploading {} together failed ({e}): sending them one by one",
                    count(paths.len() as u64, "file")
                );
                rest.extend(paths);
            }
        }
        None
    }

    /// Reads and chunks a small file; `None` if it is not one (or is changing).
    fn stage(&self, path: &SyncPath, base_version: u64) -> Option<Staged> {
        let local = confine::check(&self.root, path).ok()?;
        let before =
            fingerprint(&local).filter(|f| f.kind == Kind::File && f.size <= SMALL_FILE)?;
        let data = fs::read(&local).ok()?;
        if data.len() as u64 != before.size {
            return None;
        }
        let params = self.remote.params.for_file(before.size);
        let codec = self.remote.codec();
        let mut cutter = lbsync_chunkstore::Cutter::new(&data[..], params);
        let mut cut = Vec::new();
        while let Some(block) = cutter.next_block().ok()? {
            cut.extend(block.into_iter().map(|p| p.data));
        }
        let chunks = codec.pieces(cut);
        let manifest = codec.manifest(chunks.iter().map(Piece::chunk_ref).collect());
        Some(Staged {
            synced: self.synced_manifest(path),
            path: path.clone(),
            base_version,
            before,
            chunks,
            manifest,
            chunks_sent: 0,
            bytes_sent: 0,
            deltas: 0,
        })
    }

    /// One batch of [`Syncer::upload_small_files`]; returns the files left over.
    async fn upload_staged(&mut self, mut batch: Vec<Staged>) -> Result<Vec<(SyncPath, u64)>> {
        // What to send: an edited chunk whose predecessors are cached goes as a delta without
        // asking (the delta is about the size of the question); the others are asked about.
        let mut queued: HashSet<ChunkId> = HashSet::new();
        let mut deltas: Vec<(usize, pb::ChunkData)> = Vec::new();
        let mut ask: Vec<(usize, usize)> = Vec::new();
        for (f, s) in batch.iter().enumerate() {
            let bases = s
                .synced
                .as_ref()
                .map(|old| edit_bases(old, &s.manifest, MAX_DELTA_BASES));
            for (i, c) in s.chunks.iter().enumerate() {
                if self.index.contains(&c.id()) || !queued.insert(c.id()) {
                    continue;
                }
                let (present, base) = self.held(bases.as_ref().map_or(&[][..], |b| &b[i]));
                if !present.is_empty() {
                    let wire = encode_chunk_against(c.id(), c.stored(), &present, &base);
                    if !wire.base_ids.is_empty() {
                        deltas.push((f, wire));
                        continue;
                    }
                }
                ask.push((f, i));
            }
        }
        let ids: Vec<ChunkId> = ask.iter().map(|&(f, i)| batch[f].chunks[i].id()).collect();
        let missing: HashSet<ChunkId> = if ids.is_empty() {
            HashSet::new()
        } else {
            self.remote.missing(&ids).await?.into_iter().collect()
        };
        // A plain folder's new chunks go compressed together when the server takes that: many
        // small files share much that each alone cannot compress away.
        let together = self.remote.chunks_together && !self.remote.codec().is_sealed();
        let plain = ask.into_iter().filter_map(|(f, i)| {
            let c = &batch[f].chunks[i];
            missing.contains(&c.id()).then(|| {
                let wire = if together {
                    lbsync_proto::wire::raw_chunk(c.id(), c.stored())
                } else {
                    c.wire_unprobed()
                };
                (f, wire)
            })
        });
        let wires: Vec<(usize, pb::ChunkData)> = deltas.into_iter().chain(plain).collect();
        let mut puts = if together {
            Puts::together()
        } else {
            Puts::new()
        };
        for (f, wire) in wires {
            let s = &mut batch[f];
            s.chunks_sent += 1;
            s.deltas += u64::from(!wire.base_ids.is_empty());
            s.bytes_sent += prost::Message::encoded_len(&wire) as u64;
            if !puts.push(&self.remote, wire).await {
                break;
            }
        }
        self.remote.sent += puts.finish(&self.remote).await?;

        // Commit the files that did not change meanwhile.
        let mut left = Vec::new();
        let mut committing = Vec::new();
        let mut reqs = Vec::new();
        for s in batch {
            if fingerprint(&s.path.to_local(&self.root)).as_ref() != Some(&s.before) {
                left.push((s.path, s.base_version));
                continue;
            }
            reqs.push(self.file_commit(
                &s.path,
                s.base_version,
                &s.before,
                &s.manifest,
                s.synced.as_ref(),
                false,
            ));
            committing.push(s);
        }
        let outcomes = self.commit_batch(reqs).await?;
        for (s, outcome) in committing.into_iter().zip(outcomes) {
            let BatchOutcome::Committed {
                version,
                seq,
                committed_ns,
            } = outcome
            else {
                left.push((s.path, s.base_version));
                continue;
            };
            self.saw_commit(seq, &s.path, version, committed_ns);
            let how = if s.deltas > 0 {
                format!(" ({} as a delta against the previous version)", s.deltas)
            } else {
                String::new()
            };
            info!(
                "uploaded {}: {} of {} new{how}, {} sent",
                s.path,
                s.chunks_sent,
                count(s.chunks.len() as u64, "chunk"),
                human(s.bytes_sent)
            );
            self.report.chunks_sent += s.chunks_sent;
            self.report.uploaded += 1;
            for c in &s.chunks {
                self.cache.put(&c.id(), c.stored());
            }
            // Committed: a local failure to record it must not make the rest look uncommitted.
            let at = (version, seq, committed_ns);
            if let Err(e) = self.record_file(&s.path, at, &s.manifest, s.before) {
                self.pending(&s.path, &e);
            }
        }
        Ok(left)
    }

    /// Records a synced file: state, cached manifest, chunk index.
    /// Records `path` as synced at `(version, seq, committed_ns)` of the server with manifest
    /// `m`, its local copy now being `local`.
    pub(crate) fn record_file(
        &mut self,
        path: &SyncPath,
        (version, seq, committed_ns): (u64, u64, i64),
        m: &Manifest,
        local: Fingerprint,
    ) -> Result<()> {
        self.state.put_manifest(m)?;
        self.index.add(path, m);
        self.state.state.files.insert(
            path.as_str().to_owned(),
            Synced {
                seq,
                committed_ns,
                ..Synced::new(version, Some(m.id()), local)
            },
        );
        Ok(())
    }

    /// Commits a directory, a symlink or a deletion (no content).
    pub(crate) async fn commit_plain(
        &mut self,
        entry: Entry,
        base_version: u64,
    ) -> Result<CommitOutcome> {
        let req = CommitRequest {
            folder: self.remote.folder.clone(),
            entry,
            base_version,
            content: None,
        };
        match self.commit(req).await? {
            Committed::Outcome(o) => Ok(o),
            Committed::MissingChunks(_) | Committed::UnknownManifest => Err(Error::Protocol {
                what: "Commit",
                reason: "asked for chunks of an entry without content".into(),
            }),
        }
    }

    /// Writes a server file version at its path: into a temp file inside `.lbsync/`, every chunk
    /// checked, then renamed into place, so a half file is never visible. Chunks that local files
    /// hold are copied from disk; only the others are downloaded.
    pub(crate) async fn download_file(&mut self, r: &Entry) -> Result<()> {
        if self.apply_metadata(r)? {
            return Ok(());
        }
        let staged = self.stage_download(r, true).await?;
        self.place_download(r, staged)
    }

    /// Writes the server's version of `r` to a temp file (fsync'd if `sync`; else the caller
    /// makes it durable before [`Self::place_download`]).
    pub(crate) async fn stage_download(&mut self, r: &Entry, sync: bool) -> Result<StagedDownload> {
        let id = r.manifest.ok_or_else(|| Error::Protocol {
            what: "Changes",
            reason: format!("file {} has no manifest", r.path),
        })?;
        let m = match self.state.manifest(&id) {
            Some(m) => m,
            None => {
                let base = self
                    .state
                    .state
                    .files
                    .get(r.path.as_str())
                    .and_then(Synced::manifest_id)
                    .and_then(|b| self.state.manifest(&b));
                self.remote.manifest(id, base.as_ref()).await?
            }
        };
        // A name of its own, created new: a temp file may hold what a swap displaced.
        let tmp = self
            .state
            .new_tmp(&format!("{}.part", &id.to_string()[..16]));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(Error::io(format!("creating {}", tmp.display())))?;
        let max_len = self.remote.params.largest_chunk();
        let (mut local_chunks, mut fetched) = (0u64, 0u64);
        let mut progress = Progress::new(m.size(), format!("receiving {}", r.path));
        // Per chunk, the chunks of the version here it most likely replaced: the server may send
        // an edited chunk as a delta against them. Not for a rewrite of a large file, where
        // reading the old bases would cost more than the deltas save.
        let edits: Option<HashMap<ChunkId, Vec<ChunkId>>> =
            self.synced_manifest(&r.path).and_then(|old| {
                let lens: HashMap<ChunkId, u32> =
                    old.chunks().iter().map(|c| (c.id, c.len)).collect();
                let edits: HashMap<ChunkId, Vec<ChunkId>> = m
                    .chunks()
                    .iter()
                    .zip(edit_bases(&old, &m, MAX_DELTA_BASES))
                    .filter(|(_, b)| !b.is_empty())
                    .map(|(c, b)| (c.id, b))
                    .collect();
                let base_bytes: u64 = edits
                    .values()
                    .flatten()
                    .map(|b| u64::from(lens.get(b).copied().unwrap_or(0)))
                    .sum();
                (base_bytes <= DOWNLOAD_BASE_BYTES).then_some(edits)
            });
        for window in windows(m.chunks()) {
            progress.inc(window.iter().map(|c| u64::from(c.len)).sum());
            let mut have: HashMap<ChunkId, Bytes> = HashMap::new();
            let mut need = Vec::new();
            for c in window {
                if have.contains_key(&c.id) || need.contains(&c.id) {
                    continue;
                }
                if let Some(b) = self.prefetched.chunk(&c.id) {
                    have.insert(c.id, b);
                    fetched += 1;
                    continue;
                }
                match self.index.read(&self.root, &c.id) {
                    Some(b) => {
                        have.insert(c.id, b);
                        local_chunks += 1;
                    }
                    None => need.push(c.id),
                }
            }
            if !need.is_empty() {
                fetched += need.len() as u64;
                let bases = self.delta_bases(&need, edits.as_ref());
                have.extend(self.remote.chunks(&need, &bases, max_len).await?);
            }
            if m.size() <= CACHED_FILE_MAX {
                for (id, bytes) in &have {
                    self.cache.put(id, &self.remote.codec().stored_form(bytes));
                }
            }
            for c in window {
                let bytes = have.get(&c.id).ok_or_else(|| Error::Protocol {
                    what: "GetChunks",
                    reason: format!("chunk {} of {} did not come", c.id, r.path),
                })?;
                file.write_all(bytes)
                    .map_err(Error::io(format!("writing {}", tmp.display())))?;
            }
        }
        // A peer's setuid, setgid and sticky bits are never applied.
        let mode = if r.mode == 0 { 0o644 } else { r.mode & 0o777 };
        let finish = || -> std::io::Result<()> {
            if sync {
                file.sync_all()?;
            }
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
            if r.mtime_ns > 0 {
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(r.mtime_ns as u64);
                file.set_modified(t)?;
            }
            Ok(())
        };
        finish().map_err(Error::io(format!("finishing {}", tmp.display())))?;
        drop(file);
        Ok(StagedDownload {
            tmp,
            manifest: m,
            fetched,
            local_chunks,
        })
    }

    /// Puts a staged download in place and records it.
    pub(crate) fn place_download(&mut self, r: &Entry, staged: StagedDownload) -> Result<()> {
        let StagedDownload {
            tmp,
            manifest: m,
            fetched,
            local_chunks,
        } = staged;
        let local = self.put_in_place(&r.path, &tmp)?;
        self.report.chunks_received += fetched;
        info!(
            "downloaded {} from {}: {fetched} of {} fetched, {local_chunks} copied from local files",
            r.path,
            display_device(&r.device),
            count(m.chunks().len() as u64, "chunk")
        );
        self.record_file(&r.path, (r.version, r.seq, r.committed_ns), &m, local)
    }

    /// For chunks to fetch, the bases to offer (from `edits`) whose bytes are at hand: in local
    /// files or the cache.
    fn delta_bases(
        &self,
        need: &[ChunkId],
        edits: Option<&HashMap<ChunkId, Vec<ChunkId>>>,
    ) -> DeltaBases {
        let Some(edits) = edits else {
            return DeltaBases::new();
        };
        need.iter()
            .filter_map(|id| {
                let (ids, bytes) = self.held(edits.get(id)?);
                (!ids.is_empty()).then_some((*id, (ids, bytes)))
            })
            .collect()
    }

    /// Of `ids`, those whose bytes are at hand (in local files or the cache), and their bytes
    /// concatenated: what a delta can be made or read against.
    fn held(&self, ids: &[ChunkId]) -> (Vec<ChunkId>, Vec<u8>) {
        let (mut held, mut bytes) = (Vec::new(), Vec::new());
        for id in ids {
            // The stored form: the cache keeps it; a local file holds the plaintext.
            let got = self
                .index
                .read(&self.root, id)
                .map(|b| self.remote.codec().stored_form(&b).to_vec())
                .or_else(|| self.cache.get(id));
            if let Some(got) = got {
                held.push(*id);
                bytes.extend_from_slice(&got);
            }
        }
        (held, bytes)
    }

    /// Creates a directory or symlink from the server.
    pub(crate) fn apply_plain(&mut self, r: &Entry) -> Result<()> {
        let dest = confine::check(&self.root, &r.path)?;
        let local = match r.kind {
            EntryKind::Dir => {
                self.make_room(&r.path, true)?;
                match fs::symlink_metadata(&dest) {
                    Ok(md) if md.is_dir() => {}
                    res => {
                        if res.is_ok() {
                            // A synced file or link gives way (`make_room` kept a changed one).
                            let synced = self.state.state.files.get(r.path.as_str());
                            let synced = synced.map(|s| s.local.clone());
                            let gone = self
                                .remove_unchanged(&r.path, synced.as_ref())
                                .map_err(Error::io(format!("replacing {}", dest.display())))?;
                            if !gone {
                                return Err(Error::Usage(format!(
                                    "{} changed here as the server's directory arrived",
                                    r.path
                                )));
                            }
                        }
                        fs::create_dir(&dest)
                            .map_err(Error::io(format!("creating {}", dest.display())))?
                    }
                }
                if r.mode != 0 {
                    let perm = std::os::unix::fs::PermissionsExt::from_mode(r.mode & 0o777);
                    fs::set_permissions(&dest, perm)
                        .map_err(Error::io(format!("setting mode of {}", dest.display())))?;
                }
                fingerprint(&dest)
                    .ok_or_else(|| Error::Usage(format!("{} vanished", dest.display())))?
            }
            EntryKind::Symlink => {
                let target = r.symlink_target.clone().unwrap_or_default();
                let tmp = self.state.new_tmp(&format!(
                    "{}.link",
                    &ChunkId::of(r.path.as_str().as_bytes()).to_string()[..16]
                ));
                std::os::unix::fs::symlink(&target, &tmp)
                    .map_err(Error::io(format!("creating symlink {}", tmp.display())))?;
                self.put_in_place(&r.path, &tmp)?
            }
            EntryKind::File => unreachable!("files are downloaded"),
        };
        self.state.state.files.insert(
            r.path.as_str().to_owned(),
            Synced {
                seq: r.seq,
                committed_ns: r.committed_ns,
                ..Synced::new(r.version, None, local)
            },
        );
        info!(
            "created {} {} from {}",
            kind_word(r.kind),
            r.path,
            display_device(&r.device)
        );
        Ok(())
    }

    /// Puts `new` (a finished download or a fresh symlink, in the temp directory) at `path` and
    /// returns its fingerprint there. What was there is swapped out atomically and then looked
    /// at: deleted if it is what was synced, kept as a conflicted copy if it changed, even in the
    /// instant before the swap. The fingerprint is taken after the swap, and is racy (see
    /// `Synced::racy`), so a write landing just after it is still found by the next scan.
    fn put_in_place(&mut self, path: &SyncPath, new: &Path) -> Result<Fingerprint> {
        let dest = self.make_room(path, false)?;
        let inode = fingerprint(new).map_or(0, |f| f.inode);
        place::note_origin(new, path, inode)
            .map_err(Error::io(format!("recording {}", new.display())))?;
        let swapped = place::swap_in(new, &dest).map_err(Error::io(format!(
            "moving {} into {}",
            new.display(),
            dest.display()
        )));
        let placed = fingerprint(&dest);
        if let Some(parent) = dest.parent() {
            self.placed_dirs.insert(parent.to_path_buf());
        }
        let old = match swapped {
            Ok(true) => fingerprint(new),
            Ok(false) => None,
            Err(e) => {
                place::clear_origin(new);
                return Err(e);
            }
        };
        // What was displaced is dealt with first, whatever happened to the new file.
        if let Some(old) = old {
            let synced = self.state.state.files.get(path.as_str()).map(|s| &s.local);
            if old.kind != Kind::Dir && synced.is_some_and(|s| same_file(&old, s)) {
                fs::remove_file(new).map_err(Error::io(format!("removing {}", new.display())))?;
            } else {
                let copy = self.keep_as_conflicted_copy(path, new)?;
                info!("{path} changed here as the server's version arrived: kept it as {copy}");
            }
        }
        place::clear_origin(new);
        placed.ok_or_else(|| Error::Usage(format!("{} vanished", dest.display())))
    }

    /// Makes `path` free to be replaced: creates its parent, and if something unsynced or changed
    /// is there (it changed after the plan was made), moves it to a conflicted copy first.
    fn make_room(&mut self, path: &SyncPath, dir: bool) -> Result<PathBuf> {
        let dest = confine::make_parents(&self.root, path)?;
        let Some(now) = fingerprint(&dest) else {
            return Ok(dest);
        };
        let synced = self.state.state.files.get(path.as_str()).map(|s| &s.local);
        if now.kind == Kind::Dir && !dir {
            // A file or link cannot take a directory's place: a synced one that is empty gives
            // way; one that holds anything, or that does not sync (ignored), stays and the
            // entry waits.
            let synced_dir = synced.is_some_and(|s| s.kind == Kind::Dir);
            return match synced_dir && fs::remove_dir(&dest).is_ok() {
                true => Ok(dest),
                false => Err(Error::Usage(format!(
                    "{path} is a directory here that holds files or does not sync, and a {} \
                     on the server",
                    if synced_dir { "file" } else { "file or link" }
                ))),
            };
        }
        if now.kind == Kind::Dir || synced.is_some_and(|s| unchanged(&now, s)) {
            return Ok(dest);
        }
        let copy = self.conflict_copy_of(path)?;
        info!("{path} changed here while the server's version arrived: kept it as {copy}");
        Ok(dest)
    }
}

/// A manifest's chunks in download windows: bounded in count and in bytes, so that a window of
/// a very large file's 1 MiB chunks does not hold a gigabyte.
/// The synced version's chunks, for finding which of them a new chunk of the file most likely
/// replaced: the old chunks at the same place, counted from the last chunk both versions share.
struct OldChunks {
    /// Old chunks: id, offset, length, in file order.
    chunks: Vec<(ChunkId, u64, u64)>,
    /// The first old offset of each id.
    at: HashMap<ChunkId, u64>,
    /// New offset of the next chunk, and new minus old offset at the last shared chunk.
    new_off: u64,
    shift: i64,
}

/// Old chunks a new chunk is sent against as a block delta, at most.
const MAX_SIGNATURE_BASES: usize = 2;

impl OldChunks {
    fn new(m: &Manifest) -> Self {
        let mut off = 0;
        let mut chunks = Vec::with_capacity(m.chunks().len());
        let mut at = HashMap::with_capacity(m.chunks().len());
        for c in m.chunks() {
            chunks.push((c.id, off, u64::from(c.len)));
            at.entry(c.id).or_insert(off);
            off += u64::from(c.len);
        }
        Self {
            chunks,
            at,
            new_off: 0,
            shift: 0,
        }
    }

    /// Per chunk of the next `refs` of the new file, its candidate bases: for one in `missing`,
    /// the old chunks (at most [`MAX_SIGNATURE_BASES`], in file order) that overlap its place
    /// by at least a quarter of the shorter of the two.
    fn candidates(&mut self, refs: &[ChunkRef], missing: &HashSet<ChunkId>) -> Vec<Vec<ChunkId>> {
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            let len = u64::from(r.len);
            let mut found = Vec::new();
            if let Some(&old_off) = self.at.get(&r.id) {
                self.shift = self.new_off as i64 - old_off as i64;
            } else if missing.contains(&r.id) {
                let from = (self.new_off as i64 - self.shift).max(0) as u64;
                let to = from + len;
                let first = self.chunks.partition_point(|&(_, o, l)| o + l <= from);
                let mut overlaps: Vec<(u64, usize)> = self.chunks[first..]
                    .iter()
                    .enumerate()
                    .take_while(|(_, (_, o, _))| *o < to)
                    .filter_map(|(k, &(_, o, l))| {
                        let over = (o + l).min(to) - o.max(from);
                        (over * 4 >= l.min(len)).then_some((over, first + k))
                    })
                    .collect();
                overlaps.sort_by_key(|o| std::cmp::Reverse(o.0));
                overlaps.truncate(MAX_SIGNATURE_BASES);
                overlaps.sort_by_key(|&(_, k)| k);
                found = overlaps.iter().map(|&(_, k)| self.chunks[k].0).collect();
            }
            self.new_off += len;
            out.push(found);
        }
        out
    }
}

fn windows(chunks: &[ChunkRef]) -> impl Iterator<Item = &[ChunkRef]> {
    let mut rest = chunks;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0u64;
        let n = rest
            .iter()
            .take(DOWNLOAD_WINDOW)
            .take_while(|c| {
                let fits = bytes < DOWNLOAD_WINDOW_BYTES;
                bytes += u64::from(c.len);
                fits
            })
            .count();
        let (window, tail) = rest.split_at(n.max(1));
        rest = tail;
        Some(window)
    })
}

pub(crate) fn kind_word(k: EntryKind) -> &'static str {
    match k {
        EntryKind::File => "file",
        EntryKind::Dir => "directory",
        EntryKind::Symlink => "symlink",
    }
}

/// The device name without its id.
pub(crate) fn display_device(device: &str) -> &str {
    device.split('#').next().unwrap_or(device)
}

/// Chunks longer than this search their block delta on a blocking thread: the rolling search
/// over a 1 MiB chunk takes milliseconds, which an async worker must not spend.
const DELTA_INLINE_MAX: usize = 64 << 10;

/// The chunk `data` as a block delta against `bases` (described by `sigs`), when that saves
/// enough against `plain_len` (see [`lbsync_proto::wire::encode_block_delta`]).
async fn block_delta_of(
    id: ChunkId,
    data: &Bytes,
    bases: &[ChunkId],
    sigs: Vec<lbsync_chunkstore::Signature>,
    plain_len: usize,
) -> Option<pb::ChunkData> {
    if data.len() <= DELTA_INLINE_MAX {
        return lbsync_proto::wire::encode_block_delta(id, data, bases, &sigs, plain_len);
    }
    let (data, bases) = (data.clone(), bases.to_vec());
    tokio::task::spawn_blocking(move || {
        lbsync_proto::wire::encode_block_delta(id, &data, &bases, &sigs, plain_len)
    })
    .await
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_large_chunk_searches_its_block_delta_off_the_async_threads_with_the_same_result() {
        let base: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut new = base.clone();
        new.insert(100_000, b'!');
        assert!(new.len() > DELTA_INLINE_MAX);
        let (id, base_id) = (ChunkId::of(&new), ChunkId::of(&base));
        let sig = lbsync_chunkstore::Signature::of(&base);
        let new = Bytes::from(new);
        let off = block_delta_of(id, &new, &[base_id], vec![sig.clone()], new.len())
            .await
            .expect("a 1-byte insert goes as a block delta");
        let inline =
            lbsync_proto::wire::encode_block_delta(id, &new, &[base_id], &[sig], new.len())
                .unwrap();
        assert_eq!(off, inline);
        assert!(off.data.len() < 10_000, "{} bytes", off.data.len());
    }

    #[test]
    fn download_windows_are_bounded_in_count_and_bytes_and_cover_everything() {
        let refs = |lens: &[u32]| -> Vec<ChunkRef> {
            lens.iter()
                .enumerate()
                .map(|(i, &len)| ChunkRef {
                    id: ChunkId::of(&(i as u64).to_le_bytes()),
                    len,
                })
                .collect()
        };
        let small = refs(&[8 << 10; 3000]);
        let sizes: Vec<usize> = windows(&small).map(<[ChunkRef]>::len).collect();
        assert_eq!(sizes, [1024, 1024, 952]);
        let large = refs(&[1 << 20; 20]);
        let sizes: Vec<usize> = windows(&large).map(<[ChunkRef]>::len).collect();
        assert_eq!(sizes, [8, 8, 4], "8 MiB of 1 MiB chunks per window");
        let joined: Vec<ChunkRef> = windows(&large).flatten().copied().collect();
        assert_eq!(joined, large);
        assert_eq!(windows(&[]).count(), 0);
    }
}
