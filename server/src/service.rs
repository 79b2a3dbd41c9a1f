//! The `lbsync.v1.Sync` gRPC service. Handlers convert the wire types on their first lines, run
//! store and metadata work on blocking threads, and map errors in one place ([`status`]).

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use lbsync_chunkstore::{Chunk, ChunkStore, Inserted, Manifest, ManifestDelta, PackStore};
use lbsync_proto::convert::{batch_from_pb, delta_to_pb, manifest_id};
use lbsync_proto::wire::{
    MAX_DELTA_BASES, chunk_bases, decode_chunk_against, encode_chunk, encode_chunk_against,
};
use lbsync_proto::{
    BatchOutcome, CommitOutcome, CommitRequest, Content, Entry, EntryKind, PROTOCOL_VERSION,
    SyncPath, ids_from_bytes, ids_to_bytes, pb,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use crate::auth::Tokens;
use crate::authz::{Authz, Caller, Need, Who};
use crate::error::{Error, Result, status};
use crate::folders::{Folders, check_folder_name};
use crate::scope::Scopes;
use crate::users::Users;

/// Chunks received are stored in batches of about this size: one fsync each. Received chunks
/// share their messages' buffers, so a batch holds several times its size in memory: at 8 MiB
/// the server's peak RSS in a 1 GiB push was ~165 MB, at 4 MiB ~125 MB, at the same speed.
const PUT_BATCH_BYTES: usize = 4 << 20;
/// The most chunk bytes (after decompression) one PutChunks message may declare: bounds the
/// memory one message can make the server allocate.
const PUT_MESSAGE_RAW_LIMIT: u64 = 64 << 20;
/// The most bytes of offered delta bases one GetChunks request makes the server read.
const GET_BASE_BUDGET: u64 = 64 << 20;
/// GetChunks answers in messages of about this size.
const GET_MESSAGE_BYTES: usize = 1 << 20;
/// A Changes message carries at most this many entries.
const CHANGES_PER_MESSAGE: usize = 512;
/// An open Changes stream checks this often that its token is still live and its folder still
/// shared with its user: a revoked token stops a running `watch` within this.
const AUTH_RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Limits announced in the handshake and enforced by the service.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest message decoded or encoded.
    pub max_message_bytes: usize,
    /// Most ids in one MissingChunks or GetChunks request.
    pub max_ids_per_request: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // A new file's commit carries its whole manifest, 36 bytes a chunk: 64 MiB covers
            // files up to about 15 GB at 8 KiB chunks.
            max_message_bytes: 64 << 20,
            max_ids_per_request: 65_536,
        }
    }
}

/// The service's state; clones share it.
#[derive(Clone)]
pub struct SyncService {
    store: PackStore,
    folders: Folders,
    scopes: Scopes,
    authz: Authz,
    /// (folder, seq) of every commit, for the Changes streams.
    commits: broadcast::Sender<(Arc<str>, u64)>,
    shutdown: watch::Receiver<bool>,
    limits: Limits,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Metadata(format!("a worker task failed: {e}")))?
}

fn to_status<T>(r: Result<T>) -> Result<T, Status> {
    r.map_err(|e| status(&e))
}

fn check_ids(ids: &[u8], limits: &Limits) -> Result<Vec<lbsync_chunkstore::ChunkId>> {
    let ids = ids_from_bytes(ids)?;
    if ids.len() > limits.max_ids_per_request as usize {
        return Err(Error::BadRequest(format!(
            "{} ids in one request, the limit is {}: split the request",
            ids.len(),
            limits.max_ids_per_request
        )));
    }
    Ok(ids)
}

impl SyncService {
    /// A service over `store`; `shutdown` turning true ends the open Changes streams. `admin`
    /// holds the token file's tokens; users and their tokens are in the store.
    pub fn new(
        store: PackStore,
        shutdown: watch::Receiver<bool>,
        limits: Limits,
        admin: Option<Tokens>,
    ) -> Result<Self> {
        let folders = Folders::open(store.db())?;
        let scopes = Scopes::open(&store, &folders)?;
        let authz = Authz::new(Users::open(store.db())?, folders.clone(), admin);
        Ok(Self {
            store,
            folders,
            scopes,
            authz,
            commits: broadcast::channel(1024).0,
            shutdown,
            limits,
        })
    }

    /// Whether requests need a token (a token file, or user tokens in the store).
    pub fn tokens_required(&self) -> bool {
        self.authz.required()
    }

    /// Resolves a commit's content in `folder` to a stored manifest whose chunks are all
    /// present, and adds them to the folder's scope. With `scoped`, the manifests and chunks it
    /// names must be in the folder's scope already: others are answered unknown or missing, as if
    /// the store lacked them (a user never builds on another folder's data by naming its ids).
    fn store_manifest(
        store: &PackStore,
        scopes: &Scopes,
        folder: &str,
        scoped: bool,
        content: Content,
    ) -> Result<(Manifest, usize)> {
        let known = |id: &lbsync_chunkstore::ManifestId| -> Result<Option<Manifest>> {
            if scoped && !scopes.has_manifest(folder, id)? {
                return Ok(None);
            }
            Ok(store.get_manifest(id)?)
        };
        // The chunks that may not be in the folder's scope yet: none for a known manifest in
        // scope, the new refs of a delta on a base in scope, else all (`None`).
        let (manifest, new_refs, fresh) = match content {
            Content::Known(id) => {
                let m = known(&id)?.ok_or_else(|| {
                    Error::UnknownManifest(format!(
                        "manifest {id} is not on the server: send the manifest in full"
                    ))
                })?;
                let fresh = scopes.has_manifest(folder, &id)?.then(Vec::new);
                (m, 0, fresh)
            }
            Content::Full(m) => {
                let n = m.chunks().len();
                (m, n, None)
            }
            Content::Delta { base, delta } => {
                let base_m = known(&base)?.ok_or_else(|| {
                    Error::UnknownManifest(format!(
                        "delta base manifest {base} is not on the server: send the manifest in full"
                    ))
                })?;
                let n = delta.new_refs().count();
                let fresh = scopes
                    .has_manifest(folder, &base)?
                    .then(|| delta.new_refs().map(|r| r.id).collect::<Vec<_>>());
                (delta.apply(&base_m)?, n, fresh)
            }
        };
        let ids: Vec<_> = manifest.chunks().iter().map(|c| c.id).collect();
        let mut missing = store.missing(&ids)?;
        if scoped {
            // Chunks outside the folder's scope are as missing as chunks the store lacks.
            let mut seen: std::collections::HashSet<_> = missing.iter().copied().collect();
            let outside = scopes.outside(folder, fresh.as_deref().unwrap_or(&ids))?;
            missing.extend(outside.into_iter().filter(|id| seen.insert(*id)));
        }
        if !missing.is_empty() {
            return Err(Error::MissingChunks(missing));
        }
        store.put_manifest(&manifest)?;
        match &fresh {
            None => scopes.add_manifest(folder, &manifest, true)?,
            Some(new) => {
                scopes.add_manifest(folder, &manifest, false)?;
                scopes.add_chunks(folder, new)?;
            }
        }
        Ok((manifest, new_refs))
    }

    /// Commits `req` for `caller` (authorized to write its folder); `received` is the size of the
    /// request on the wire, for the log.
    async fn commit_request(
        &self,
        caller: &Caller,
        req: CommitRequest,
        received: usize,
    ) -> Result<CommitOutcome> {
        check_folder_name(&req.folder)?;
        let CommitRequest {
            folder,
            mut entry,
            base_version,
            content,
        } = req;
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
        if entry.kind == EntryKind::Symlink && !entry.deleted && entry.symlink_target.is_none() {
            return Err(Error::BadRequest(format!(
                "symlink {} has no target",
                entry.path
            )));
        }
        let (total, new_refs) = match content {
            Some(content) => {
                let (store, scopes) = (self.store.clone(), self.scopes.clone());
                let scoped = caller.scope(&folder).is_some();
                let f = folder.clone();
                let (manifest, new_refs) =
                    blocking(move || Self::store_manifest(&store, &scopes, &f, scoped, content))
                        .await?;
                if entry.size != manifest.size() {
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
        let folders = self.folders.clone();
        let f = folder.clone();
        let outcome = blocking(move || folders.commit(&f, entry, base_version)).await?;
        match &outcome {
            CommitOutcome::Committed(e) => {
                info!(
                    "commit {folder}/{} v{} by {} ({}): {}{new_refs} of {total} chunks new, {received} bytes received",
                    e.path,
                    e.version,
                    e.device,
                    caller.name(),
                    if e.deleted { "deleted; " } else { "" },
                );
                let _ = self.commits.send((folder.as_str().into(), e.seq));
            }
            CommitOutcome::Conflict(current) => info!(
                "commit {folder}/{} refused: based on v{base_version}, current is v{}",
                current.path, current.version
            ),
        }
        Ok(outcome)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::sync_server::Sync for SyncService {
    async fn handshake(
        &self,
        req: Request<pb::HandshakeRequest>,
    ) -> Result<Response<pb::HandshakeResponse>, Status> {
        let who = Who::of(&req);
        let r = req.into_inner();
        to_status(check_folder_name(&r.folder))?;
        let caller = self
            .authz
            .authorize(who, "Handshake", &r.folder, Need::Open)
            .await?;
        if r.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "the client speaks protocol version {}, this server {PROTOCOL_VERSION}: upgrade the older one",
                r.protocol_version
            )));
        }
        let folders = self.folders.clone();
        let folder = r.folder.clone();
        let head = to_status(blocking(move || folders.ensure(&folder)).await)?;
        let (authz, folder) = (self.authz.clone(), r.folder.clone());
        let read_only = to_status(blocking(move || authz.read_only(&caller, &folder)).await)?;
        debug!("handshake from {} for folder {}", r.device, r.folder);
        Ok(Response::new(pb::HandshakeResponse {
            protocol_version: PROTOCOL_VERSION,
            params: Some(self.store.params().into()),
            max_message_bytes: self.limits.max_message_bytes as u64,
            max_ids_per_request: self.limits.max_ids_per_request,
            head,
            store_id: self.store.store_id().to_owned(),
            read_only,
        }))
    }

    async fn missing_chunks(
        &self,
        req: Request<pb::MissingChunksRequest>,
    ) -> Result<Response<pb::MissingChunksResponse>, Status> {
        let who = Who::of(&req);
        let r = req.into_inner();
        let caller = self
            .authz
            .authorize(who, "MissingChunks", &r.folder, Need::Read)
            .await?;
        let ids = to_status(check_ids(&r.ids, &self.limits))?;
        let missing = match caller.scope(&r.folder) {
            Some(f) => {
                let (store, scopes, f) = (self.store.clone(), self.scopes.clone(), f.to_owned());
                to_status(blocking(move || scopes.missing(&store, &f, &ids)).await)?
            }
            None => to_status(self.store.missing(&ids).map_err(Error::from))?,
        };
        Ok(Response::new(pb::MissingChunksResponse {
            missing: ids_to_bytes(&missing),
        }))
    }

    async fn put_chunks(
        &self,
        req: Request<Streaming<pb::PutChunksRequest>>,
    ) -> Result<Response<pb::PutChunksResponse>, Status> {
        let who = Who::of(&req);
        // No message of an unknown caller is read.
        let caller = self.authz.authenticate(who, "PutChunks").await?;
        let mut stream = req.into_inner();
        // The first message names the folder; nothing is stored before it is authorized.
        let mut first = Some(stream.message().await?);
        let folder = first
            .as_ref()
            .and_then(|m| m.as_ref())
            .map(|m| m.folder.clone())
            .unwrap_or_default();
        self.authz
            .permit(&caller, "PutChunks", &folder, Need::Write)
            .await?;
        let scoped = caller.scope(&folder).map(str::to_owned);
        let max_len = self.store.params().largest_chunk();
        let mut pending: Vec<Chunk> = Vec::new();
        let mut pending_bytes = 0usize;
        let mut in_flight: Option<tokio::task::JoinHandle<Result<Vec<Inserted>>>> = None;
        let mut answer = pb::PutChunksResponse::default();
        let mut failure: Option<Status> = None;
        let mut received = 0usize;
        loop {
            let next = match first.take() {
                Some(m) => Ok(m),
                None => stream.message().await,
            };
            let msg = match next {
                Ok(m) => m,
                Err(s) => {
                    // The upload broke off: keep what arrived intact, so a retry skips it.
                    failure = Some(s);
                    None
                }
            };
            let done = msg.is_none();
            if let Some(m) = msg {
                received += m.chunks.iter().map(|c| c.data.len()).sum::<usize>();
                let declared: u64 = m.chunks.iter().map(|c| u64::from(c.raw_len)).sum();
                if declared > PUT_MESSAGE_RAW_LIMIT {
                    failure = Some(status(&Error::BadRequest(format!(
                        "one PutChunks message declares {declared} bytes of chunks, over the \
                         {PUT_MESSAGE_RAW_LIMIT} allowed: send fewer chunks per message"
                    ))));
                }
                let m = if failure.is_some() {
                    pb::PutChunksRequest::default()
                } else {
                    m
                };
                let (store, scopes, scoped) =
                    (self.store.clone(), self.scopes.clone(), scoped.clone());
                let verified = blocking(move || {
                    let mut base_budget = PUT_MESSAGE_RAW_LIMIT;
                    let scope = scoped.as_deref().map(|f| (&scopes, f));
                    m.chunks
                        .into_iter()
                        .map(|c| receive_chunk(&store, scope, c, max_len, &mut base_budget))
                        .collect::<Result<Vec<Chunk>>>()
                })
                .await;
                match verified {
                    Ok(chunks) => {
                        pending_bytes += chunks.iter().map(Chunk::len).sum::<usize>();
                        pending.extend(chunks);
                    }
                    Err(e) => failure = Some(status(&e)),
                }
            }
            let stop = done || failure.is_some();
            if pending_bytes >= PUT_BATCH_BYTES || (stop && !pending.is_empty()) {
                if let Some(h) = in_flight.take() {
                    count(&mut answer, h.await)?;
                }
                let batch = std::mem::take(&mut pending);
                pending_bytes = 0;
                let (store, scopes) = (self.store.clone(), self.scopes.clone());
                let (folder, scoped) = (folder.clone(), scoped.is_some());
                in_flight = Some(tokio::task::spawn_blocking(move || {
                    insert_in_scope(&store, &scopes, &folder, scoped, &batch)
                }));
            }
            if stop {
                break;
            }
        }
        if let Some(h) = in_flight.take() {
            count(&mut answer, h.await)?;
        }
        if let Some(s) = failure {
            return Err(s);
        }
        info!(
            "received {} chunks for {folder:?} from {} ({received} bytes on the wire): {} new, {} \
             already stored",
            answer.stored + answer.already_present,
            caller.name(),
            answer.stored,
            answer.already_present
        );
        Ok(Response::new(answer))
    }

    async fn commit(
        &self,
        req: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let who = Who::of(&req);
        let r = req.into_inner();
        let caller = self
            .authz
            .authorize(who, "Commit", &r.folder, Need::Write)
            .await?;
        let metadata_bytes = prost::Message::encoded_len(&r);
        let req = to_status(CommitRequest::try_from(r).map_err(Error::from))?;
        let outcome = to_status(self.commit_request(&caller, req, metadata_bytes).await)?;
        Ok(Response::new(outcome.into()))
    }

    async fn commit_batch(
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
        let sizes: Vec<usize> = r.commits.iter().map(prost::Message::encoded_len).collect();
        let reqs = to_status(batch_from_pb(r).map_err(Error::from))?;
        let mut results = Vec::with_capacity(reqs.len());
        // Set once a commit fails for a reason not its own: the rest are not tried, and the
        // answer still reports the commits that took effect before it.
        let mut stopped: Option<String> = None;
        for (req, size) in reqs.into_iter().zip(sizes) {
            let outcome = match &stopped {
                Some(why) => BatchOutcome::NotAttempted(why.clone()),
                None => match self.commit_request(&caller, req, size).await {
                    Ok(CommitOutcome::Committed(e)) => BatchOutcome::Committed {
                        version: e.version,
                        seq: e.seq,
                        committed_ns: e.committed_ns,
                    },
                    Ok(CommitOutcome::Conflict(e)) => BatchOutcome::Conflict(e),
                    Err(e) => batch_refusal(e).unwrap_or_else(|e| {
                        let why = status(&e).message().to_owned();
                        stopped = Some(why.clone());
                        BatchOutcome::NotAttempted(why)
                    }),
                },
            };
            results.push(outcome.into());
        }
        Ok(Response::new(pb::CommitBatchResponse { results }))
    }

    type ChangesStream = BoxStream<pb::ChangesResponse>;

    async fn changes(
        &self,
        req: Request<pb::ChangesRequest>,
    ) -> Result<Response<Self::ChangesStream>, Status> {
        let who = Who::of(&req);
        let r = req.into_inner();
        let caller = self
            .authz
            .authorize(who, "Changes", &r.folder, Need::Read)
            .await?;
        let folder: Arc<str> = r.folder.into();
        // Subscribe before reading the journal, so no commit falls between the two.
        let mut commits = self.commits.subscribe();
        let folders = self.folders.clone();
        let f = folder.clone();
        let cursor = r.cursor;
        let (entries, head) = to_status(blocking(move || folders.changes_since(&f, cursor)).await)?;
        let (tx, rx) = mpsc::channel(8);
        let mut shutdown = self.shutdown.clone();
        let folders = self.folders.clone();
        let authz = self.authz.clone();
        tokio::spawn(async move {
            if !send_changes(&tx, entries, head).await {
                return;
            }
            let mut cursor = head;
            // Only a user's token can be revoked or lose its folder.
            let rechecks = caller.scope(&folder).is_some();
            let mut recheck = tokio::time::interval(AUTH_RECHECK);
            recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = recheck.tick(), if rechecks => {
                        if let Err(s) = authz.recheck(&caller, "Changes", &folder).await {
                            let _ = tx.send(Err(s)).await;
                            return;
                        }
                        continue;
                    }
                    _ = shutdown.changed() => {
                        let _ = tx.send(Err(Status::unavailable("the server is shutting down: reconnect in a moment"))).await;
                        return;
                    }
                    () = tx.closed() => return,
                    ev = commits.recv() => match ev {
                        Ok((f, seq)) if f == folder && seq > cursor => {}
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
                let folders = folders.clone();
                let f = folder.clone();
                match blocking(move || folders.changes_since(&f, cursor)).await {
                    Ok((entries, head)) => {
                        if !entries.is_empty() && !send_changes(&tx, entries, head).await {
                            return;
                        }
                        cursor = head;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(status(&e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_manifest(
        &self,
        req: Request<pb::GetManifestRequest>,
    ) -> Result<Response<pb::GetManifestResponse>, Status> {
        let who = Who::of(&req);
        let r = req.into_inner();
        let caller = self
            .authz
            .authorize(who, "GetManifest", &r.folder, Need::Read)
            .await?;
        let id = to_status(manifest_id("manifest_id", &r.manifest_id).map_err(Error::from))?;
        let base = if r.base_manifest_id.is_empty() {
            None
        } else {
            Some(to_status(
                manifest_id("base_manifest_id", &r.base_manifest_id).map_err(Error::from),
            )?)
        };
        let (store, scopes) = (self.store.clone(), self.scopes.clone());
        let scoped = caller.scope(&r.folder).map(str::to_owned);
        let content = to_status(
            blocking(move || {
                // Outside the caller's folder a manifest is as absent as one never stored.
                let reach = |m: &lbsync_chunkstore::ManifestId| match &scoped {
                    Some(f) => scopes.has_manifest(f, m),
                    None => Ok(true),
                };
                let not_found = || Error::NotFound(format!("manifest {id} is not on the server"));
                if !reach(&id)? {
                    return Err(not_found());
                }
                let m = store.get_manifest(&id)?.ok_or_else(not_found)?;
                let base_m = match base {
                    Some(b) if reach(&b)? => store.get_manifest(&b)?.map(|bm| (b, bm)),
                    _ => None,
                };
                Ok(match base_m {
                    Some((b, bm)) => pb::get_manifest_response::Content::Delta(delta_to_pb(
                        &b,
                        &ManifestDelta::diff(&bm, &m),
                    )),
                    None => pb::get_manifest_response::Content::Manifest(Bytes::from(m.encode())),
                })
            })
            .await,
        )?;
        Ok(Response::new(pb::GetManifestResponse {
            content: Some(content),
        }))
    }

    type GetChunksStream = BoxStream<pb::GetChunksResponse>;

    async fn get_chunks(
        &self,
        req: Request<pb::GetChunksRequest>,
    ) -> Result<Response<Self::GetChunksStream>, Status> {
        let who = Who::of(&req);
        let r = req.into_inner();
        let caller = self
            .authz
            .authorize(who, "GetChunks", &r.folder, Need::Read)
            .await?;
        let scoped = caller.scope(&r.folder).map(str::to_owned);
        let ids = to_status(check_ids(&r.ids, &self.limits))?;
        if !r.bases.is_empty() && r.bases.len() != ids.len() {
            return Err(status(&Error::BadRequest(format!(
                "GetChunks names delta bases for {} of {} chunks: send one (maybe empty) per chunk",
                r.bases.len(),
                ids.len()
            ))));
        }
        let bases = to_status(
            r.bases
                .iter()
                .map(|b| {
                    let ids = ids_from_bytes(b)?;
                    if ids.len() > MAX_DELTA_BASES {
                        return Err(Error::BadRequest(format!(
                            "{} delta bases for one chunk, the limit is {MAX_DELTA_BASES}",
                            ids.len()
                        )));
                    }
                    Ok(ids)
                })
                .collect::<Result<Vec<_>>>(),
        )?;
        let (tx, rx) = mpsc::channel(4);
        let (store, scopes) = (self.store.clone(), self.scopes.clone());
        // Reading and compressing is blocking work: one blocking task feeds the stream.
        tokio::task::spawn_blocking(move || {
            let scope = scoped.as_deref().map(|f| (&scopes, f));
            let mut msg = pb::GetChunksResponse::default();
            let mut size = 0usize;
            // Offered bases are read up to this many bytes a request; past it, chunks go plain.
            let mut base_budget = GET_BASE_BUDGET;
            for (i, id) in ids.into_iter().enumerate() {
                // `get` has checked the bytes against the id. Outside the caller's folder a
                // chunk is as absent as one never stored.
                let chunk = match in_scope(scope, &id) {
                    Ok(true) => store.get(&id).map_err(Error::from),
                    Ok(false) => Ok(None),
                    Err(e) => Err(e),
                }
                .and_then(|b| {
                    b.ok_or_else(|| Error::NotFound(format!("chunk {id} is not on the server")))
                });
                match chunk {
                    Ok(bytes) => {
                        let wire = match bases.get(i).filter(|b| !b.is_empty()) {
                            Some(b) => encode_against_stored(
                                &store,
                                scope,
                                id,
                                &bytes,
                                b,
                                &mut base_budget,
                            ),
                            None => encode_chunk(id, &bytes),
                        };
                        size += wire.data.len();
                        msg.chunks.push(wire);
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(status(&e)));
                        return;
                    }
                }
                if size >= GET_MESSAGE_BYTES {
                    if tx.blocking_send(Ok(std::mem::take(&mut msg))).is_err() {
                        return;
                    }
                    size = 0;
                }
            }
            if !msg.chunks.is_empty() {
                let _ = tx.blocking_send(Ok(msg));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let who = Who::of(&req);
        let r = req.into_inner();
        self.authz
            .authorize(who, "History", &r.folder, Need::Read)
            .await?;
        let path = to_status(SyncPath::from_bytes(&r.path).map_err(Error::from))?;
        let folders = self.folders.clone();
        let versions = to_status(blocking(move || folders.history(&r.folder, &path)).await)?;
        Ok(Response::new(pb::HistoryResponse {
            versions: versions.into_iter().map(Into::into).collect(),
        }))
    }

    async fn restore(
        &self,
        req: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let who = Who::of(&req);
        let r = req.into_inner();
        let caller = self
            .authz
            .authorize(who, "Restore", &r.folder, Need::Write)
            .await?;
        let path = to_status(SyncPath::from_bytes(&r.path).map_err(Error::from))?;
        let folders = self.folders.clone();
        let folder = r.folder.clone();
        let (old, current) = to_status(
            blocking(move || {
                let old = folders.version(&folder, &path, r.version)?.ok_or_else(|| {
                    Error::NotFound(format!(
                        "{path} has no retained version {}: see its history",
                        r.version
                    ))
                })?;
                Ok((old, folders.current(&folder, &path)?))
            })
            .await,
        )?;
        let content = old.manifest.filter(|_| !old.deleted).map(Content::Known);
        let entry = Entry {
            device: r.device,
            ..old
        };
        let outcome = to_status(
            self.commit_request(
                &caller,
                CommitRequest {
                    folder: r.folder,
                    entry,
                    base_version: current.map_or(0, |c| c.version),
                    content,
                },
                0,
            )
            .await,
        )?;
        Ok(Response::new(outcome.into()))
    }
}

/// A chunk off the wire, checked against its id; a delta is rebuilt on the stored chunks it names.
/// The bases of one message may total at most `base_budget` bytes (it is decremented): a few
/// bytes of deltas must not make the server read gigabytes.
fn receive_chunk(
    store: &PackStore,
    scope: Option<(&Scopes, &str)>,
    c: pb::ChunkData,
    max_len: u32,
    base_budget: &mut u64,
) -> Result<Chunk> {
    let bases = chunk_bases(&c)?;
    if bases.is_empty() {
        return Ok(decode_chunk_against(c, max_len, None)?);
    }
    let mut base = Vec::new();
    for b in &bases {
        // A base outside the caller's folder is as absent as one never stored.
        let stored = if in_scope(scope, b)? {
            store.get(b)?
        } else {
            None
        };
        let bytes = stored.ok_or_else(|| {
            Error::NotFound(format!(
                "delta base chunk {b} is not on the server: send the chunk whole"
            ))
        })?;
        *base_budget = base_budget.checked_sub(bytes.len() as u64).ok_or_else(|| {
            Error::BadRequest(format!(
                "the deltas of one PutChunks message name over {PUT_MESSAGE_RAW_LIMIT} bytes of \
                 bases: send fewer deltas per message"
            ))
        })?;
        base.extend_from_slice(&bytes);
    }
    Ok(decode_chunk_against(c, max_len, Some(&base))?)
}

/// A chunk for a client that holds `bases`: a delta against them when the store has them all,
/// they fit in what is left of `budget` (decremented) and the delta is smaller; else plain.
fn encode_against_stored(
    store: &PackStore,
    scope: Option<(&Scopes, &str)>,
    id: lbsync_chunkstore::ChunkId,
    bytes: &Bytes,
    bases: &[lbsync_chunkstore::ChunkId],
    budget: &mut u64,
) -> pb::ChunkData {
    let mut base = Vec::new();
    for b in bases {
        // A delta against a base outside the caller's folder would tell that the store has it.
        if !in_scope(scope, b).unwrap_or(false) {
            return encode_chunk(id, bytes);
        }
        match store.get(b) {
            Ok(Some(bb)) if bb.len() as u64 <= *budget => {
                *budget -= bb.len() as u64;
                base.extend_from_slice(&bb);
            }
            _ => return encode_chunk(id, bytes),
        }
    }
    encode_chunk_against(id, bytes, bases, &base)
}

/// Whether a chunk is in the caller's folder's scope (always, for a caller who sees the store).
fn in_scope(scope: Option<(&Scopes, &str)>, id: &lbsync_chunkstore::ChunkId) -> Result<bool> {
    match scope {
        Some((scopes, folder)) => scopes.has_chunk(folder, id),
        None => Ok(true),
    }
}

/// Stores a batch of received chunks and adds them to `folder`'s scope (when one is named). With
/// `scoped`, a chunk the store held but the folder did not counts as new: the uploader must not
/// learn that another folder holds it.
fn insert_in_scope(
    store: &PackStore,
    scopes: &Scopes,
    folder: &str,
    scoped: bool,
    batch: &[Chunk],
) -> Result<Vec<Inserted>> {
    let ids: Vec<_> = batch.iter().map(Chunk::id).collect();
    let before = if scoped {
        Some(scopes.outside(folder, &ids)?)
    } else {
        None
    };
    let mut outcome = store.insert_batch(batch)?;
    if !folder.is_empty() {
        scopes.add_chunks(folder, &ids)?;
    }
    if let Some(outside) = before {
        let outside: std::collections::HashSet<_> = outside.into_iter().collect();
        for (o, id) in outcome.iter_mut().zip(&ids) {
            if outside.contains(id) {
                *o = Inserted::New;
            }
        }
    }
    Ok(outcome)
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

fn count(
    answer: &mut pb::PutChunksResponse,
    joined: Result<Result<Vec<Inserted>>, tokio::task::JoinError>,
) -> Result<(), Status> {
    let outcome = joined
        .map_err(|e| Error::Metadata(format!("a worker task failed: {e}")))
        .and_then(|r| r)
        .map_err(|e| status(&e))?;
    for o in outcome {
        match o {
            Inserted::New => answer.stored += 1,
            Inserted::AlreadyPresent => answer.already_present += 1,
        }
    }
    Ok(())
}

/// Sends entries in messages of at most [`CHANGES_PER_MESSAGE`], the last carrying `head`. False
/// when the client has gone.
async fn send_changes(
    tx: &mpsc::Sender<Result<pb::ChangesResponse, Status>>,
    entries: Vec<Entry>,
    head: u64,
) -> bool {
    let mut batches: Vec<Vec<Entry>> = Vec::new();
    let mut entries = entries.into_iter().peekable();
    while entries.peek().is_some() {
        batches.push(entries.by_ref().take(CHANGES_PER_MESSAGE).collect());
    }
    if batches.is_empty() {
        batches.push(Vec::new());
    }
    let last = batches.len() - 1;
    for (i, batch) in batches.into_iter().enumerate() {
        let cursor = if i == last {
            head
        } else {
            batch.last().map_or(head, |e| e.seq)
        };
        let msg = pb::ChangesResponse {
            entries: batch.into_iter().map(Into::into).collect(),
            cursor,
            caught_up: i == last,
        };
        if tx.send(Ok(msg)).await.is_err() {
            return false;
        }
    }
    true
}
