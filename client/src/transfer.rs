//! Moving one path each way: uploading a local file's new chunks and committing it, downloading a
//! server version into place.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use lbsync_chunkstore::{Chunk, ChunkId, ChunkRef, Manifest, ManifestDelta};
use lbsync_proto::wire::encode_chunk;
use lbsync_proto::{CommitOutcome, CommitRequest, Content, Entry, EntryKind, SyncPath, pb};
use tracing::info;

use crate::engine::Syncer;
use crate::error::{Error, Result};
use crate::local::{fingerprint, key, unchanged};
use crate::remote::Committed;
use crate::state::{Fingerprint, Kind, Synced};

/// Chunks go to the server in messages of about this size on the wire, and of at most about this
/// many bytes once decompressed (the server refuses messages declaring over 64 MiB).
const PUT_MESSAGE_BYTES: usize = 1 << 20;
const PUT_MESSAGE_RAW_BYTES: usize = 16 << 20;
/// Chunks are checked against the server in batches of at most this many chunks and about this
/// many bytes (a batch of a very large file's 1 MiB chunks would otherwise hold half a gigabyte).
const MISSING_BATCH: usize = 512;
const MISSING_BATCH_BYTES: usize = 4 << 20;
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
            let style = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
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

/// Bytes in words: "41.2 KB".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Syncer {
    /// Chunks `local`, sends the chunks the server lacks, and returns the manifest. Chunks of
    /// synced files are known to be on the server and are not even asked about, unless
    /// `trust_index` is false (after the server said it lacks some).
    async fn push_chunks(&mut self, local: &Path, trust_index: bool) -> Result<Pushed> {
        let file =
            fs::File::open(local).map_err(Error::io(format!("reading {}", local.display())))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut progress = Progress::new(len, format!("sending {}", local.display()));
        let params = self.remote.params.for_file(len);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Chunk>>(2);
        let reader = tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(MISSING_BATCH);
            let mut batch_bytes = 0;
            lbsync_chunkstore::chunk_pipelined::<_, Error>(file, params, |_, c| {
                batch_bytes += c.len();
                batch.push(c);
                if batch.len() == MISSING_BATCH || batch_bytes >= MISSING_BATCH_BYTES {
                    batch_bytes = 0;
                    tx.blocking_send(std::mem::take(&mut batch))
                        .map_err(|_| Error::Usage("upload abandoned".into()))?;
                }
                Ok(())
            })?;
            if !batch.is_empty() {
                let _ = tx.blocking_send(batch);
            }
            Ok::<(), Error>(())
        });
        // Sized for the file up front: doubling a multi-GB file's list would briefly hold it twice.
        let mut refs = Vec::with_capacity((len / u64::from(params.avg_size) + 16) as usize);
        let mut put: Option<(
            tokio::sync::mpsc::Sender<pb::PutChunksRequest>,
            tokio::task::JoinHandle<Result<pb::PutChunksResponse>>,
        )> = None;
        let mut msg = pb::PutChunksRequest::default();
        let (mut msg_bytes, mut msg_raw) = (0usize, 0usize);
        // Chunks already queued in this upload, by 64-bit id prefix: a repeat (a file of zeros
        // is one chunk many times) goes once, even before the server has it to say so.
        let mut sent: HashSet<u64> = HashSet::new();
        let (mut chunks_sent, mut bytes_sent) = (0u64, 0u64);
        while let Some(batch) = rx.recv().await {
            progress.inc(batch.iter().map(|c| c.len() as u64).sum());
            refs.extend(batch.iter().map(|c| ChunkRef {
                id: c.id(),
                len: c.len() as u32,
            }));
            // Deduplicated within the batch only: a set over the whole file would grow with it
            // (a repeat in a later batch is asked again; the server stores it once anyway).
            let mut asked: HashSet<ChunkId> = HashSet::with_capacity(batch.len());
            let ask: Vec<ChunkId> = batch
                .iter()
                .map(Chunk::id)
                .filter(|id| !(trust_index && self.index.contains(id)))
                .filter(|id| !sent.contains(&key(id)))
                .filter(|id| asked.insert(*id))
                .collect();
            if ask.is_empty() {
                continue;
            }
            let mut missing: HashSet<ChunkId> =
                self.remote.missing(&ask).await?.into_iter().collect();
            for c in batch.iter() {
                if !missing.remove(&c.id()) {
                    continue;
                }
                sent.insert(key(&c.id()));
                let wire = encode_chunk(c.id(), c.data());
                msg_bytes += wire.data.len();
                msg_raw += c.len();
                chunks_sent += 1;
                msg.chunks.push(wire);
                if msg_bytes >= PUT_MESSAGE_BYTES || msg_raw >= PUT_MESSAGE_RAW_BYTES {
                    let sender = &put.get_or_insert_with(|| self.remote.put_chunks()).0;
                    bytes_sent += prost::Message::encoded_len(&msg) as u64;
                    if sender.send(std::mem::take(&mut msg)).await.is_err() {
                        break;
                    }
                    (msg_bytes, msg_raw) = (0, 0);
                }
            }
        }
        reader
            .await
            .map_err(|e| Error::Usage(format!("chunking thread failed: {e}")))??;
        if !msg.chunks.is_empty() {
            let sender = &put.get_or_insert_with(|| self.remote.put_chunks()).0;
            bytes_sent += prost::Message::encoded_len(&msg) as u64;
            let _ = sender.send(msg).await;
        }
        if let Some((sender, handle)) = put {
            drop(sender);
            handle
                .await
                .map_err(|e| Error::Usage(format!("upload task failed: {e}")))??;
        }
        self.remote.sent += bytes_sent;
        Ok(Pushed {
            manifest: Manifest::new(refs),
            chunks_sent,
            bytes_sent,
        })
    }

    /// Uploads a local file and commits it on `base_version`.
    pub(crate) async fn upload_file(
        &mut self,
        path: &SyncPath,
        base_version: u64,
    ) -> Result<Uploaded> {
        let local = path.to_local(&self.root);
        let base = self
            .state
            .state
            .files
            .get(path.as_str())
            .and_then(Synced::manifest_id)
            .and_then(|id| self.state.manifest(&id));
        let mut trust_index = true;
        let mut full = false;
        for _attempt in 0..3 {
            let Some(before) = fingerprint(&local).filter(|f| f.kind == Kind::File) else {
                return Ok(Uploaded::NotSettled);
            };
            let pushed = self.push_chunks(&local, trust_index).await?;
            if fingerprint(&local).as_ref() != Some(&before) {
                return Ok(Uploaded::NotSettled);
            }
            let m = &pushed.manifest;
            let content = if !full
                && (self.index.has_manifest(&m.id())
                    || base.as_ref().is_some_and(|b| b.id() == m.id()))
            {
                Content::Known(m.id())
            } else {
                match base.as_ref().filter(|_| !full) {
                    Some(b) => Content::Delta {
                        base: b.id(),
                        delta: ManifestDelta::diff(b, m),
                    },
                    None => Content::Full(m.clone()),
                }
            };
            let entry = Entry {
                size: m.size(),
                mode: before.mode,
                mtime_ns: before.mtime_ns,
                manifest: Some(m.id()),
                ..Entry::new(path.clone(), EntryKind::File, &self.device)
            };
            let req = CommitRequest {
                folder: self.remote.folder.clone(),
                entry,
                base_version,
                content: Some(content),
            };
            match self.remote.commit(req).await? {
                Committed::Outcome(CommitOutcome::Committed(e)) => {
                    self.saw_commit(e.seq);
                    info!(
                        "uploaded {path}: {} of {} chunks new, {} sent",
                        pushed.chunks_sent,
                        m.chunks().len(),
                        human(pushed.bytes_sent)
                    );
                    self.report.chunks_sent += pushed.chunks_sent;
                    self.record_file(path, e.version, m, before)?;
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

    /// Records a synced file: state, cached manifest, chunk index.
    pub(crate) fn record_file(
        &mut self,
        path: &SyncPath,
        version: u64,
        m: &Manifest,
        local: Fingerprint,
    ) -> Result<()> {
        self.state.put_manifest(m)?;
        self.index.add(path, m);
        self.state.state.files.insert(
            path.as_str().to_owned(),
            Synced {
                version,
                manifest: Some(m.id().to_string()),
                local,
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
        match self.remote.commit(req).await? {
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
        let tmp = self
            .state
            .tmp_dir()
            .join(format!("{}.part", &id.to_string()[..16]));
        let mut file =
            fs::File::create(&tmp).map_err(Error::io(format!("creating {}", tmp.display())))?;
        let max_len = self.remote.params.largest_chunk();
        let (mut local_chunks, mut fetched) = (0u64, 0u64);
        let mut progress = Progress::new(m.size(), format!("receiving {}", r.path));
        for window in windows(m.chunks()) {
            progress.inc(window.iter().map(|c| u64::from(c.len)).sum());
            let mut have: HashMap<ChunkId, Bytes> = HashMap::new();
            let mut need = Vec::new();
            for c in window {
                if have.contains_key(&c.id) || need.contains(&c.id) {
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
                have.extend(self.remote.chunks(&need, max_len).await?);
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
        let mode = if r.mode == 0 { 0o644 } else { r.mode & 0o7777 };
        let finish = || -> std::io::Result<()> {
            file.sync_all()?;
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
            if r.mtime_ns > 0 {
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(r.mtime_ns as u64);
                file.set_modified(t)?;
            }
            Ok(())
        };
        finish().map_err(Error::io(format!("finishing {}", tmp.display())))?;
        drop(file);
        let dest = r.path.to_local(&self.root);
        self.make_room(&r.path)?;
        fs::rename(&tmp, &dest).map_err(Error::io(format!(
            "moving the download into {}",
            dest.display()
        )))?;
        let local = fingerprint(&dest)
            .ok_or_else(|| Error::Usage(format!("{} vanished", dest.display())))?;
        self.report.chunks_received += fetched;
        info!(
            "downloaded {} from {}: {fetched} of {} chunks fetched, {local_chunks} copied from local files",
            r.path,
            display_device(&r.device),
            m.chunks().len()
        );
        self.record_file(&r.path, r.version, &m, local)
    }

    /// Creates a directory or symlink from the server.
    pub(crate) fn apply_plain(&mut self, r: &Entry) -> Result<()> {
        let dest = r.path.to_local(&self.root);
        self.make_room(&r.path)?;
        match r.kind {
            EntryKind::Dir => {
                if !dest.is_dir() {
                    fs::create_dir_all(&dest)
                        .map_err(Error::io(format!("creating {}", dest.display())))?;
                }
                if r.mode != 0 {
                    let perm = std::os::unix::fs::PermissionsExt::from_mode(r.mode & 0o7777);
                    fs::set_permissions(&dest, perm)
                        .map_err(Error::io(format!("setting mode of {}", dest.display())))?;
                }
            }
            EntryKind::Symlink => {
                let target = r.symlink_target.clone().unwrap_or_default();
                std::os::unix::fs::symlink(&target, &dest)
                    .map_err(Error::io(format!("creating symlink {}", dest.display())))?;
            }
            EntryKind::File => unreachable!("files are downloaded"),
        }
        let local = fingerprint(&dest)
            .ok_or_else(|| Error::Usage(format!("{} vanished", dest.display())))?;
        self.state.state.files.insert(
            r.path.as_str().to_owned(),
            Synced {
                version: r.version,
                manifest: None,
                local,
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

    /// Makes `path` free to be replaced: creates its parent, and if something unsynced or changed
    /// is there (it changed after the plan was made), moves it to a conflicted copy first.
    fn make_room(&mut self, path: &SyncPath) -> Result<()> {
        let dest = path.to_local(&self.root);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .map_err(Error::io(format!("creating {}", parent.display())))?;
        }
        let Some(now) = fingerprint(&dest) else {
            return Ok(());
        };
        let synced = self.state.state.files.get(path.as_str()).map(|s| &s.local);
        let safe_to_replace = synced.is_some_and(|s| unchanged(&now, s)) && now.kind != Kind::Dir;
        if safe_to_replace {
            if now.kind == Kind::Symlink {
                fs::remove_file(&dest)
                    .map_err(Error::io(format!("replacing {}", dest.display())))?;
            }
            return Ok(());
        }
        if now.kind == Kind::Dir {
            return Ok(());
        }
        let copy = self.conflict_copy_of(path)?;
        info!("{path} changed here while the server's version arrived: kept it as {copy}");
        Ok(())
    }
}

/// A manifest's chunks in download windows: bounded in count and in bytes, so that a window of
/// a very large file's 1 MiB chunks does not hold a gigabyte.
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

#[cfg(test)]
mod tests {
    use super::*;

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
