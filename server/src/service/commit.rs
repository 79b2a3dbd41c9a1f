//! Commits: a file's content resolved to a stored, checked manifest, then the journal entry.

use lbsync_chunkstore::{
    ChunkParams, ChunkStore, Manifest, check_delta, check_manifest, delta_chunk_count,
};
use lbsync_proto::convert::batch_from_pb;
use lbsync_proto::{
    BatchOutcome, CommitOutcome, CommitRequest, Content, EntryKind, SameContent, SyncPath, pb,
};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::authz::{Caller, Need, Who};
use crate::error::{Error, Result, status};
use crate::folders::check_folder_name;
use crate::meta::Scopes;

use super::*;

impl SyncService {
    /// Resolves a commit's content in `folder` to a stored manifest whose chunks are all
    /// present, and adds them to the folder's scope. With `scoped`, the manifests and chunks it
    /// names must be in the folder's scope already: others are answered unknown or missing, as if
    /// the store lacked them (a user never builds on another folder's data by naming its ids).
    ///
    /// The manifest is checked against the file before it is built or stored (its refs within
    /// the chunking parameters for `work.size` and adding up to it, a delta's result counted
    /// from its runs); the answer also says how many refs were read and built, for the batch's
    /// budget.
    ///
    /// The manifest is not stored yet: it joins `staged`, which the group commit stores (one
    /// sync for the batch's manifests) before any commit naming it; later commits of the batch
    /// find it there.
    fn store_manifest(
        store: &dyn ChunkStore,
        scopes: &Scopes,
        folder: &str,
        scoped: bool,
        content: Content,
        work: Work,
        staged: &mut Staged,
    ) -> Result<(Manifest, usize, u64)> {
        let over = |cost: u64| {
            Error::BatchBudget(format!(
                "the commit reads and builds {cost} manifest refs, over the {} left of this \
                 CommitBatch's budget of {} refs: commit the file on its own or in a smaller batch",
                work.left, work.batch
            ))
        };
        // A manifest staged by this batch is in the folder's scope once stored.
        let in_scope = |id: &lbsync_chunkstore::ManifestId| -> Result<bool> {
            Ok(staged.manifests.contains_key(id) || scopes.has_manifest(folder, id)?)
        };
        let known = |id: &lbsync_chunkstore::ManifestId| -> Result<Option<Manifest>> {
            if let Some(m) = staged.manifests.get(id) {
                return Ok(Some(m.clone()));
            }
            if scoped && !scopes.has_manifest(folder, id)? {
                return Ok(None);
            }
            Ok(store.get_manifest(id)?)
        };
        // The chunks that may not be in the folder's scope yet: none for a known manifest in
        // scope, the new refs of a delta on a base in scope, else all (`None`).
        let (manifest, new_refs, fresh, cost) = match content {
            // Taken apart by `prepare` before any content is resolved.
            Content::Same(_) => {
                return Err(Error::BadRequest(format!(
                    "{}: same_content has no manifest to store",
                    work.path
                )));
            }
            Content::Known(id) => {
                let m = known(&id)?.ok_or_else(|| {
                    Error::UnknownManifest(format!(
                        "manifest {id} is not on the server: send the manifest in full"
                    ))
                })?;
                let cost = m.chunks().len() as u64;
                if cost > work.left {
                    return Err(over(cost));
                }
                let fresh = in_scope(&id)?.then(Vec::new);
                (m, 0, fresh, cost)
            }
            Content::Full(m) if work.encrypted => {
                // Lengths are masked: only the count can be checked.
                check_sealed_count(m.chunks().len() as u64, &work)?;
                let n = m.chunks().len();
                if n as u64 > work.left {
                    return Err(over(n as u64));
                }
                (m, n, None, n as u64)
            }
            Content::Full(m) => {
                if m.size() != work.size {
                    return Err(Error::BadRequest(format!(
                        "{} declares {} bytes but its manifest holds {}",
                        work.path,
                        work.size,
                        m.size()
                    )));
                }
                check_manifest(&m, &work.params, work.size, work.max_refs)?;
                let n = m.chunks().len();
                if n as u64 > work.left {
                    return Err(over(n as u64));
                }
                (m, n, None, n as u64)
            }
            Content::Delta { base, delta } => {
                // Counted from the runs before the base is even read.
                let built = delta_chunk_count(&delta).unwrap_or(u64::MAX);
                if built > work.left {
                    return Err(over(built));
                }
                let base_m = known(&base)?.ok_or_else(|| {
                    Error::UnknownManifest(format!(
                        "delta base manifest {base} is not on the server: send the manifest in full"
                    ))
                })?;
                let cost = built.saturating_add(base_m.chunks().len() as u64);
                if cost > work.left {
                    return Err(over(cost));
                }
                if work.encrypted {
                    // Lengths are masked; `apply` checks the runs against the base.
                    check_sealed_count(built, &work)?;
                } else {
                    check_delta(&delta, &base_m, &work.params, work.size, work.max_refs)?;
                }
                let n = delta.new_refs().count();
                let fresh =
                    in_scope(&base)?.then(|| delta.new_refs().map(|r| r.id).collect::<Vec<_>>());
                (delta.apply(&base_m)?, n, fresh, cost)
            }
        };
        let ids: Vec<_> = manifest.chunks().iter().map(|c| c.id).collect();
        // Kept from a collection running meanwhile on a shared store (see `missing_and_keep`).
        let mut missing = store.missing_and_keep(&ids)?;
        if scoped {
            // Chunks outside the folder's scope are as missing as chunks the store lacks.
            let mut seen: std::collections::HashSet<_> = missing.iter().copied().collect();
            let outside = scopes.outside(folder, fresh.as_deref().unwrap_or(&ids))?;
            missing.extend(outside.into_iter().filter(|id| seen.insert(*id)));
        }
        if !missing.is_empty() {
            return Err(Error::MissingChunks(missing));
        }
        staged.stage(&manifest, fresh);
        Ok((manifest, new_refs, cost))
    }

    /// Commits `req` for `caller` (authorized to write its folder); `received` is the size of the
    /// request on the wire, for the log.
    /// `left` is what is left of the batch's budget of manifest refs read and built (see
    /// [`Limits::max_batch_refs`]); the commit's cost is taken from it.
    pub(super) async fn commit_request(
        &self,
        caller: &Caller,
        req: CommitRequest,
        received: usize,
        left: &mut u64,
    ) -> Result<CommitOutcome> {
        let this = self.clone();
        let (scoped, name) = (caller.scope(&req.folder).is_some(), caller.name());
        let budget = *left;
        let (mut outcomes, rest) =
            blocking(move || Ok(this.commit_all(scoped, &name, vec![(req, received)], budget)))
                .await?;
        *left = rest;
        outcomes
            .pop()
            .unwrap_or_else(|| Err(Error::Metadata("a commit of one gave no outcome".into())))
    }

    /// Checks a commit and builds its manifest (staged in `staged`), ready for the group commit.
    fn prepare(
        &self,
        scoped: bool,
        req: CommitRequest,
        left: &mut u64,
        staged: &mut Staged,
    ) -> Result<(Entry, u64, usize, usize)> {
        check_folder_name(&req.folder)?;
        let CommitRequest {
            folder,
            mut entry,
            base_version,
            content,
        } = req;
        let encrypted = staged.encrypted;
        if let Some(Content::Same(same)) = content {
            return self.same_content(&folder, encrypted, entry, base_version, same);
        }
        crate::sealed::check_entry(&folder, encrypted, &entry)?;
        entry.mode &= 0o7777;
        let file = entry.kind == EntryKind::File && !entry.deleted;
        match (&content, file) {
            (None, true) => {
                return Err(Error::BadRequest(format!(
                    "commit of file {} has no content: send a manifest, a manifest id or a delta",
                    entry.path
                )));
            }
            (Some(_), false) => {
                return Err(Error::BadRequest(format!(
                    "commit of {} carries content, but only files that are not deleted have content",
                    entry.path
                )));
            }
            _ => {}
        }
        // In an encrypted folder the target travels sealed.
        if entry.kind == EntryKind::Symlink
            && !entry.deleted
            && entry.symlink_target.is_none()
            && !encrypted
        {
            return Err(Error::BadRequest(format!(
                "symlink {} has no target",
                entry.path
            )));
        }
        if entry.kind != EntryKind::Symlink && entry.symlink_target.is_some() {
            return Err(Error::BadRequest(format!(
                "{} is not a symlink but names a symlink target: send symlink_target only for \
                 symlinks",
                entry.path
            )));
        }
        let (total, new_refs) = match content {
            Some(content) => {
                let work = Work {
                    path: entry.path.clone(),
                    size: entry.size,
                    params: self.store.params(),
                    max_refs: self.limits.max_manifest_refs,
                    left: *left,
                    batch: self.limits.max_batch_refs,
                    encrypted,
                };
                let (manifest, new_refs, cost) = Self::store_manifest(
                    &*self.store,
                    &self.scopes,
                    &folder,
                    scoped,
                    content,
                    work,
                    staged,
                )
                .map_err(|e| match e {
                    Error::Store(lbsync_chunkstore::Error::BadManifest(why)) => {
                        Error::BadRequest(format!("{}: {why}", entry.path))
                    }
                    e => e,
                })?;
                *left = left.saturating_sub(cost);
                // In an encrypted folder both are masked or 0: the size travels sealed.
                if !encrypted && entry.size != manifest.size() {
                    return Err(Error::BadRequest(format!(
                        "{} declares {} bytes but its manifest holds {}",
                        entry.path,
                        entry.size,
                        manifest.size()
                    )));
                }
                entry.manifest = Some(manifest.id());
                (manifest.chunks().len(), new_refs)
            }
            None => {
                entry.manifest = None;
                entry.size = 0;
                (0, 0)
            }
        };
        Ok((entry, base_version, total, new_refs))
    }

    /// A metadata-only commit ([`Content::Same`]): the base version's entry with the fields
    /// `same` sets, and the device of `entry`. When the path is not at `base_version`, or that
    /// version is no file with content, the commit goes on with a base no path can be at, so
    /// the group commit answers it as the conflict it is (and it can never commit on another
    /// version's content).
    fn same_content(
        &self,
        folder: &str,
        encrypted: bool,
        entry: Entry,
        base_version: u64,
        same: SameContent,
    ) -> Result<(Entry, u64, usize, usize)> {
        if encrypted {
            return Err(Error::BadRequest(format!(
                "{}: folder {folder} is encrypted, and its metadata is sealed: commit the \
                 manifest id with a new sealed entry instead of same_content",
                entry.path
            )));
        }
        if entry.kind != EntryKind::File || entry.deleted {
            return Err(Error::BadRequest(format!(
                "{}: same_content is for a file that stays one",
                entry.path
            )));
        }
        let current = self.folders.current(folder, &entry.path)?;
        // A base that is no file is a conflict too, not a bad request: the client meant a
        // version of its file, and the server's version of that number is another (a store
        // restored from a backup numbers versions anew). Refused, the commit would be sent
        // again and again.
        let Some(base) = current.filter(|c| {
            c.version == base_version
                && base_version > 0
                && !c.deleted
                && c.kind == EntryKind::File
                && c.manifest.is_some()
        }) else {
            return Ok((entry, u64::MAX, 0, 0));
        };
        let new = Entry {
            mode: same.mode.map_or(base.mode, |m| m & 0o7777),
            mtime_ns: same.mtime_ns.unwrap_or(base.mtime_ns),
            device: entry.device,
            version: 0,
            seq: 0,
            committed_ns: 0,
            ..base
        };
        Ok((new, base_version, 0, 0))
    }

    /// Group commit, on a blocking thread: checks each commit of one folder in order and builds
    /// its manifest; then stores the batch's new manifests with one sync and commits every commit
    /// that got that far in one [`Folders::commit_batch`] (one flush). Returns an outcome for
    /// each commit tried, in order, and what is left of the budget `left`. A commit that fails
    /// for a reason not its own ([`stops_batch`]) is the last one tried: the commits before it
    /// still take effect, as they would have one by one.
    fn commit_all(
        &self,
        scoped: bool,
        caller: &str,
        reqs: Vec<(CommitRequest, usize)>,
        mut left: u64,
    ) -> (Vec<Result<CommitOutcome>>, u64) {
        let mut slots: Vec<Option<Result<CommitOutcome>>> = Vec::with_capacity(reqs.len());
        let mut ready: Vec<(usize, usize, usize, usize)> = Vec::new();
        let mut commits = Vec::new();
        let Some(folder) = reqs.first().map(|(r, _)| r.folder.clone()) else {
            return (Vec::new(), left);
        };
        // Read once for the batch; the group commit checks it again in its transaction.
        let encrypted = match self.folders.encrypted(&folder) {
            Ok(e) => e,
            Err(e) => return (vec![Err(e)], left),
        };
        let mut staged = Staged {
            encrypted,
            ..Staged::default()
        };
        for (i, (req, received)) in reqs.into_iter().enumerate() {
            let prepared = if req.folder == folder {
                self.prepare(scoped, req, &mut left, &mut staged)
            } else {
                Err(Error::BadRequest(format!(
                    "a commit to folder {:?} in a batch for folder {folder:?}",
                    req.folder
                )))
            };
            match prepared {
                Ok((entry, base, total, new_refs)) => {
                    ready.push((i, total, new_refs, received));
                    commits.push((entry, base));
                    slots.push(None);
                }
                Err(e) => {
                    let stop = stops_batch(&e);
                    slots.push(Some(Err(e)));
                    if stop {
                        break;
                    }
                }
            }
        }
        if !ready.is_empty() {
            let bases: Vec<u64> = commits.iter().map(|(_, b)| *b).collect();
            let done = staged
                .store(&*self.store, &self.scopes, &folder)
                .and_then(|()| {
                    self.folders
                        .commit_batch_checked(&folder, commits, encrypted)
                });
            let (outcomes, failed) = match done {
                Ok((outcomes, failed)) => (outcomes, failed),
                Err(e) => (Vec::new(), Some(e)),
            };
            let mut outcomes = outcomes.into_iter();
            let mut failed = failed.map(|e| (e.to_string(), Some(e)));
            let mut head = None;
            for ((i, total, new_refs, received), base_version) in ready.into_iter().zip(bases) {
                let outcome = match (outcomes.next(), &mut failed) {
                    (Some(o), _) => Ok(o),
                    // The first commit not committed carries the error; the rest say so.
                    (None, Some((why, e))) => Err(e
                        .take()
                        .unwrap_or_else(|| Error::Metadata(format!("not attempted: {why}")))),
                    (None, None) => Err(Error::Metadata("the group commit lost a commit".into())),
                };
                if let Ok(o) = &outcome {
                    self.metrics
                        .commit(matches!(o, CommitOutcome::Committed(_)));
                }
                match &outcome {
                    Ok(CommitOutcome::Committed(e)) => {
                        info!(
                            "commit {folder}/{} v{} by {} ({caller}): {}{new_refs} of {} new, {received} bytes received",
                            e.path,
                            e.version,
                            e.device,
                            if e.deleted { "deleted; " } else { "" },
                            lbsync_cli::units::count(total as u64, "chunk"),
                        );
                        head = Some(e.seq);
                    }
                    Ok(CommitOutcome::Conflict(current)) => info!(
                        "commit {folder}/{} refused: based on v{base_version}, current is v{}",
                        current.path, current.version
                    ),
                    Err(_) => {}
                }
                slots[i] = Some(outcome);
            }
            // One wake-up for the batch: a Changes stream reads everything after its cursor.
            if let Some(seq) = head {
                let _ = self.commits.send((folder.as_str().into(), seq));
            }
        }
        let outcomes = slots
            .into_iter()
            .map(|s| s.unwrap_or_else(|| Err(Error::Metadata("a commit got no outcome".into()))))
            .collect();
        (outcomes, left)
    }

    pub(super) async fn commit_rpc(
        &self,
        req: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let who = Who::of(&req);
        let r = req.into_inner();
        let caller = self
            .authz
            .authorize(who, "Commit", &r.folder, Need::Write)
            .await?;
        let _turn = self.gates.enter(&caller.name()).await;
        let metadata_bytes = prost::Message::encoded_len(&r);
        let brief = r.brief_answer;
        let raw = raw_entry(&r);
        let req = to_status(CommitRequest::try_from(r).map_err(Error::from))?;
        let mut unbounded = u64::MAX;
        let outcome = to_status(
            self.commit_request(&caller, req, metadata_bytes, &mut unbounded)
                .await,
        )?;
        // The client holds the entry it sent: a brief answer says only what the server assigned.
        Ok(Response::new(match outcome {
            CommitOutcome::Committed(e) if brief => pb::CommitResponse {
                result: Some(pb::commit_response::Result::Brief(pb::Committed {
                    version: e.version,
                    seq: e.seq,
                    committed_ns: e.committed_ns,
                })),
            },
            o => raw_conflict(o.into(), raw),
        }))
    }

    pub(super) async fn commit_batch_rpc(
        &self,
        req: Request<pb::CommitBatchRequest>,
    ) -> Result<Response<pb::CommitBatchResponse>, Status> {
        let who = Who::of(&req);
        let r = req.into_inner();
        to_status(check_folder_name(&r.folder))?;
        let caller = self
            .authz
            .authorize(who, "CommitBatch", &r.folder, Need::Write)
            .await?;
        let _turn = self.gates.enter(&caller.name()).await;
        let sizes: Vec<usize> = r.commits.iter().map(prost::Message::encoded_len).collect();
        let raws: Vec<bool> = r.commits.iter().map(raw_entry).collect();
        let r_folder = r.folder.clone();
        let reqs = to_status(batch_from_pb(r).map_err(Error::from))?;
        // The refs the batch's manifests and deltas would build, counted before any is tried.
        let declared = reqs
            .iter()
            .map(|r| match &r.content {
                Some(Content::Full(m)) => m.chunks().len() as u64,
                Some(Content::Delta { delta, .. }) => delta_chunk_count(delta).unwrap_or(u64::MAX),
                Some(Content::Known(_) | Content::Same(_)) | None => 0,
            })
            .fold(0u64, u64::saturating_add);
        let budget = self.limits.max_batch_refs;
        if declared > budget {
            return Err(status(&Error::BadRequest(format!(
                "the commits of this CommitBatch build {declared} manifest refs, over the limit of \
                 {budget}: send fewer or smaller commits per batch"
            ))));
        }
        let n = reqs.len();
        let this = self.clone();
        let (scoped, name) = (caller.scope(&r_folder).is_some(), caller.name());
        let reqs: Vec<_> = reqs.into_iter().zip(sizes).collect();
        let (outcomes, _) =
            to_status(blocking(move || Ok(this.commit_all(scoped, &name, reqs, budget))).await)?;
        let mut results = Vec::with_capacity(n);
        // Set once a commit fails for a reason not its own: the rest were not tried, and the
        // answer still reports the commits that took effect before it.
        let mut stopped: Option<String> = None;
        let mut outcomes = outcomes.into_iter();
        for raw in raws {
            let outcome = match (&stopped, outcomes.next()) {
                (Some(why), _) => BatchOutcome::NotAttempted(why.clone()),
                (None, None) => BatchOutcome::NotAttempted("not attempted".into()),
                (None, Some(outcome)) => match outcome {
                    Ok(CommitOutcome::Committed(e)) => BatchOutcome::Committed {
                        version: e.version,
                        seq: e.seq,
                        committed_ns: e.committed_ns,
                    },
                    Ok(CommitOutcome::Conflict(e)) => BatchOutcome::Conflict(e),
                    Err(Error::BatchBudget(why)) => {
                        // The rest are not tried: each would read before it could be refused.
                        stopped = Some(why.clone());
                        BatchOutcome::Invalid(why)
                    }
                    Err(e) => batch_refusal(e).unwrap_or_else(|e| {
                        let why = status(&e).message().to_owned();
                        stopped = Some(why.clone());
                        BatchOutcome::NotAttempted(why)
                    }),
                },
            };
            let mut result = pb::CommitResult::from(outcome);
            if raw
                && let Some(pb::commit_result::Result::Conflict(c)) = &mut result.result
                && let Some(e) = c.current.take()
            {
                c.current = Some(e.with_raw_path());
            }
            results.push(result);
        }
        Ok(Response::new(pb::CommitBatchResponse { results }))
    }
}

/// Whether a commit sent its entry's path raw (answered so, then).
fn raw_entry(c: &pb::CommitRequest) -> bool {
    c.entry.as_ref().is_some_and(|e| !e.raw_path.is_empty())
}

/// A commit's answer, a conflict's entry with its path raw when the commit sent its own raw.
fn raw_conflict(mut r: pb::CommitResponse, raw: bool) -> pb::CommitResponse {
    if raw
        && let Some(pb::commit_response::Result::Conflict(c)) = &mut r.result
        && let Some(e) = c.current.take()
    {
        c.current = Some(e.with_raw_path());
    }
    r
}

/// What one commit may cost, and what it is checked against.
#[derive(Clone, Debug)]
pub(super) struct Work {
    /// The file's path, for messages.
    path: SyncPath,
    /// The file's declared size.
    size: u64,
    /// The store's chunking parameters (a file's come from [`ChunkParams::for_file`]).
    params: ChunkParams,
    /// The most refs the commit's manifest may have.
    max_refs: u64,
    /// The manifest refs it may still read and build: what is left of its batch's budget.
    left: u64,
    /// The batch's whole budget, for the message.
    batch: u64,
    /// The folder is encrypted: the manifest's lengths are masked and `size` is 0, so only its
    /// count is checked.
    encrypted: bool,
}

/// The count limit of a manifest in an encrypted folder, whose lengths are masked (so neither
/// the chunking parameters nor the size can bound it): the commit's and the format's limits.
fn check_sealed_count(count: u64, work: &Work) -> Result<()> {
    let limit = work.max_refs.min(lbsync_chunkstore::MAX_MANIFEST_CHUNKS);
    if count > limit {
        return Err(Error::BadRequest(format!(
            "{}: the manifest has {count} chunks, over the limit of {limit} per commit: a file \
             this large cannot be synced with this server",
            work.path
        )));
    }
    Ok(())
}

/// Whether an error of one commit ends its batch: the batch's budget is spent, or it is not the
/// commit's own fault (see [`batch_refusal`]).
fn stops_batch(e: &Error) -> bool {
    match e {
        Error::BatchBudget(_) => true,
        Error::MissingChunks(_) | Error::UnknownManifest(_) => false,
        e => status(e).code() != tonic::Code::InvalidArgument,
    }
}

/// A batch's new manifests, stored together before its commits.
#[derive(Default)]
pub(super) struct Staged {
    /// The batch's folder is encrypted (read once, checked again by the group commit).
    encrypted: bool,
    /// By id, for the batch's later commits that name them.
    manifests: std::collections::HashMap<lbsync_chunkstore::ManifestId, Manifest>,
    /// In order, with the chunks that enter the folder's scope with each (`None`: all).
    order: Vec<(
        lbsync_chunkstore::ManifestId,
        Option<Vec<lbsync_chunkstore::ChunkId>>,
    )>,
}

impl Staged {
    fn stage(&mut self, m: &Manifest, fresh: Option<Vec<lbsync_chunkstore::ChunkId>>) {
        let id = m.id();
        self.manifests.entry(id).or_insert_with(|| m.clone());
        self.order.push((id, fresh));
    }

    /// Stores the manifests (one sync) and adds them and their chunks to `folder`'s scope.
    fn store(&mut self, store: &dyn ChunkStore, scopes: &Scopes, folder: &str) -> Result<()> {
        if self.order.is_empty() {
            return Ok(());
        }
        let chunks: Vec<lbsync_chunkstore::Chunk> = self
            .manifests
            .values()
            .map(|m| lbsync_chunkstore::Chunk::new(m.encode()))
            .collect();
        store.insert_batch(&chunks)?;
        for (id, fresh) in &self.order {
            let m = &self.manifests[id];
            match fresh {
                None => scopes.add_manifest(folder, m, true)?,
                Some(new) => {
                    scopes.add_manifest(folder, m, false)?;
                    scopes.add_chunks(folder, new)?;
                }
            }
        }
        Ok(())
    }
}

/// How one commit of a batch ended, when it ended for a reason of its own: the errors a single
/// Commit answers with a status of its own. Others (the disk is full, the store failed) end the
/// whole batch.
fn batch_refusal(e: Error) -> Result<BatchOutcome> {
    match e {
        Error::MissingChunks(ids) => Ok(BatchOutcome::MissingChunks(ids)),
        Error::UnknownManifest(m) => Ok(BatchOutcome::UnknownManifest(m)),
        e if status(&e).code() == tonic::Code::InvalidArgument => {
            Ok(BatchOutcome::Invalid(e.to_string()))
        }
        e => Err(e),
    }
}
