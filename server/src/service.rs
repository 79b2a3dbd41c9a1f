//! The `lbsync.v1.Sync` gRPC service. Handlers convert the wire types on their first lines, run
//! store and metadata work on blocking threads, and map errors in one place ([`status`]).

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use lbsync_chunkstore::{ChunkStore, ManifestDelta};
use lbsync_proto::check_device;
use lbsync_proto::convert::{delta_to_pb, manifest_id};
use lbsync_proto::{
    CommitRequest, Content, Entry, PROTOCOL_VERSION, SyncPath, ids_from_bytes, ids_to_bytes, pb,
};
use tokio::sync::{broadcast, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use crate::auth::Tokens;
use crate::authz::{Authz, Need, Who};
use crate::backend::Backend;
use crate::error::{Error, Result, status};
use crate::folders::check_folder_name;
use crate::gate::Gates;
use crate::meta::{Folders, Scopes};

mod changes;
mod chunks;
mod commit;

/// Requests of one connection in progress at once (tower's `ConcurrencyLimit`, applied by
/// [`crate::run`]); more wait. A stream counts until its answer starts, not while it flows.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 64;

/// Limits announced in the handshake and enforced by the service.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest message decoded or encoded.
    pub max_message_bytes: usize,
    /// Most ids in one MissingChunks or GetChunks request.
    pub max_ids_per_request: u32,
    /// Most chunk refs one commit's manifest may have, sent in full or built from a delta. The
    /// manifest must also fit its file: refs within the chunking parameters for its size,
    /// adding up to it, so a file has at most `size / min_size + 1` refs whatever this says.
    pub max_manifest_refs: u64,
    /// Most manifest refs the commits of one CommitBatch may read and build together (the refs
    /// their manifests and deltas build, plus the delta bases and known manifests they read).
    pub max_batch_refs: u64,
    /// Most versions one History answer lists, newest first; it says when there are more.
    pub max_history: u32,
    /// Most requests of one user (or of the token file's tokens) served at once; more wait
    /// their turn. Streams count while the server works for them, not while they wait for the
    /// client.
    pub max_requests_per_user: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // A new file's commit carries its whole manifest, 36 bytes a chunk: 64 MiB covers
            // files up to about 15 GB at 8 KiB chunks.
            max_message_bytes: 64 << 20,
            max_ids_per_request: 65_536,
            // 144 MB of refs: 4 GiB at the smallest chunks, 512 GiB at a large file's average.
            max_manifest_refs: 1 << 22,
            max_batch_refs: 1 << 22,
            max_history: 1000,
            max_requests_per_user: 16,
        }
    }
}

/// The service's state; clones share it.
#[derive(Clone)]
pub struct SyncService {
    store: Arc<dyn ChunkStore>,
    store_id: Arc<str>,
    folders: Folders,
    scopes: Scopes,
    authz: Authz,
    /// (folder, seq) of every commit, for the Changes streams.
    commits: broadcast::Sender<(Arc<str>, u64)>,
    shutdown: watch::Receiver<bool>,
    limits: Limits,
    /// Turns per user: see [`Limits::max_requests_per_user`].
    gates: Gates,
    metrics: crate::Metrics,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Metadata(format!("a worker task failed: {e}")))?
}

/// What one GetManifests answer may hold, encoded: a batch of small files' manifests fits many
/// times over; a large file's goes alone through GetManifest.
const GET_MANIFESTS_BYTES: usize = 4 << 20;

/// A manifest as GetManifest answers it: in full, or as a delta against `base` when the caller
/// may read that too (`None`: not on the server, or outside the caller's folder `scoped`).
fn manifest_answer(
    store: &dyn ChunkStore,
    scopes: &Scopes,
    scoped: Option<&str>,
    id: lbsync_chunkstore::ManifestId,
    base: Option<lbsync_chunkstore::ManifestId>,
) -> Result<Option<pb::get_manifest_response::Content>> {
    // Outside the caller's folder a manifest is as absent as one never stored.
    let reach = |m: &lbsync_chunkstore::ManifestId| match scoped {
        Some(f) => scopes.has_manifest(f, m),
        None => Ok(true),
    };
    if !reach(&id)? {
        return Ok(None);
    }
    let Some(m) = store.get_manifest(&id)? else {
        return Ok(None);
    };
    let base_m = match base {
        Some(b) if reach(&b)? => store.get_manifest(&b)?.map(|bm| (b, bm)),
        _ => None,
    };
    Ok(Some(match base_m {
        Some((b, bm)) => pb::get_manifest_response::Content::Delta(delta_to_pb(
            &b,
            &ManifestDelta::diff(&bm, &m),
        )),
        None => pb::get_manifest_response::Content::Manifest(Bytes::from(m.encode())),
    }))
}

/// The commit time of the folder's entry at `head` (`HandshakeResponse.head_committed_ns`): 0 at
/// head 0, or when that entry is gone from the journal or a commit moved the head on meanwhile.
fn head_committed_ns(
    folders: &dyn crate::meta::FolderMeta,
    folder: &str,
    head: u64,
) -> Result<i64> {
    if head == 0 {
        return Ok(0);
    }
    Ok(match folders.backlog(folder, head - 1)? {
        (crate::folders::Backlog::Compacted(entries), _) => entries
            .iter()
            .find(|e| e.seq == head)
            .map_or(0, |e| e.committed_ns),
        (crate::folders::Backlog::Scan, _) => 0,
    })
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
    /// A service over `backend`; `shutdown` turning true ends the open Changes streams. `admin`
    /// holds the token file's tokens; users and their tokens are in the backend.
    pub fn new(
        backend: Backend,
        shutdown: watch::Receiver<bool>,
        limits: Limits,
        admin: Option<Tokens>,
    ) -> Result<Self> {
        let authz = Authz::new(backend.users, backend.folders.clone(), admin);
        Ok(Self {
            store: backend.chunks,
            store_id: backend.store_id.into(),
            folders: backend.folders,
            scopes: backend.scopes,
            authz,
            commits: broadcast::channel(1024).0,
            shutdown,
            limits,
            gates: Gates::new(limits.max_requests_per_user),
            metrics: crate::Metrics::default(),
        })
    }

    /// Counts commits and chunks in `metrics` (by default, in a set of its own).
    pub fn with_metrics(mut self, metrics: crate::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The channel on which every commit's (folder, seq) wakes the Changes streams: commits
    /// made through other servers sharing the metadata are sent into it too.
    pub fn commits(&self) -> broadcast::Sender<(Arc<str>, u64)> {
        self.commits.clone()
    }

    /// Whether requests need a token (a token file, or user tokens in the store).
    pub fn tokens_required(&self) -> bool {
        self.authz.required()
    }
}

/// The gRPC message compression the server accepts, and sends to clients that accept it
/// (`HandshakeResponse.compression`): clients ask for it on CommitBatch and Changes, whose
/// paths and entries compress well, never on GetChunks (chunks are compressed one by one).
pub const COMPRESSION: &str = "zstd";

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
        to_status(check_device(&r.device).map_err(Error::from))?;
        let _turn = self.gates.enter(&caller.name()).await;
        if r.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "the client speaks protocol version {}, this server {PROTOCOL_VERSION}: upgrade the older one",
                r.protocol_version
            )));
        }
        let folders = self.folders.clone();
        let folder = r.folder.clone();
        let (head, head_committed_ns, encrypted) = to_status(
            blocking(move || {
                let head = folders.ensure(&folder)?;
                let at = head_committed_ns(folders.as_ref(), &folder, head)?;
                Ok((head, at, folders.encrypted(&folder)?))
            })
            .await,
        )?;
        let (authz, folder) = (self.authz.clone(), r.folder.clone());
        let read_only = to_status(blocking(move || authz.read_only(&caller, &folder)).await)?;
        debug!("handshake from {} for folder {}", r.device, r.folder);
        Ok(Response::new(pb::HandshakeResponse {
            protocol_version: PROTOCOL_VERSION,
            params: Some(self.store.params().into()),
            max_message_bytes: self.limits.max_message_bytes as u64,
            max_ids_per_request: self.limits.max_ids_per_request,
            head,
            store_id: self.store_id.to_string(),
            read_only,
            max_manifest_refs: self.limits.max_manifest_refs,
            max_batch_refs: self.limits.max_batch_refs,
            max_history: self.limits.max_history,
            max_requests_per_user: self.limits.max_requests_per_user,
            encrypted,
            chunks_together: true,
            compression: vec![COMPRESSION.into()],
            same_content_commits: true,
            raw_sealed_paths: true,
            block_deltas: true,
            head_committed_ns,
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
        let _turn = self.gates.enter(&caller.name()).await;
        let ids = to_status(check_ids(&r.ids, &self.limits))?;
        let missing = match caller.scope(&r.folder) {
            Some(f) => {
                let (store, scopes, f) = (self.store.clone(), self.scopes.clone(), f.to_owned());
                to_status(blocking(move || scopes.missing(&*store, &f, &ids)).await)?
            }
            None => {
                // The index may be a database: look up off the async threads.
                let store = self.store.clone();
                to_status(blocking(move || store.missing(&ids).map_err(Error::from)).await)?
            }
        };
        Ok(Response::new(pb::MissingChunksResponse {
            missing: ids_to_bytes(&missing),
        }))
    }

    async fn put_chunks(
        &self,
        req: Request<Streaming<pb::PutChunksRequest>>,
    ) -> Result<Response<pb::PutChunksResponse>, Status> {
        self.put_chunks_rpc(req).await
    }

    async fn get_signatures(
        &self,
        req: Request<pb::GetSignaturesRequest>,
    ) -> Result<Response<pb::GetSignaturesResponse>, Status> {
        self.get_signatures_rpc(req).await
    }

    async fn commit(
        &self,
        req: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        self.commit_rpc(req).await
    }

    async fn commit_batch(
        &self,
        req: Request<pb::CommitBatchRequest>,
    ) -> Result<Response<pb::CommitBatchResponse>, Status> {
        self.commit_batch_rpc(req).await
    }

    type ChangesStream = BoxStream<pb::ChangesResponse>;

    async fn changes(
        &self,
        req: Request<pb::ChangesRequest>,
    ) -> Result<Response<Self::ChangesStream>, Status> {
        self.changes_rpc(req).await
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
        let _turn = self.gates.enter(&caller.name()).await;
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
                manifest_answer(&*store, &scopes, scoped.as_deref(), id, base)?
                    .ok_or_else(|| Error::NotFound(format!("manifest {id} is not on the server")))
            })
            .await,
        )?;
        Ok(Response::new(pb::GetManifestResponse {
            content: Some(content),
        }))
    }

    async fn get_manifests(
        &self,
        req: Request<pb::GetManifestsRequest>,
    ) -> Result<Response<pb::GetManifestsResponse>, Status> {
        let who = Who::of(&req);
        let r = req.into_inner();
        let caller = self
            .authz
            .authorize(who, "GetManifests", &r.folder, Need::Read)
            .await?;
        let _turn = self.gates.enter(&caller.name()).await;
        let max = self.limits.max_ids_per_request as usize;
        if r.manifest_ids.len() > max {
            return Err(Status::invalid_argument(format!(
                "GetManifests asked for {} manifests; at most {max} a call: split the request",
                r.manifest_ids.len()
            )));
        }
        if !r.base_manifest_ids.is_empty() && r.base_manifest_ids.len() != r.manifest_ids.len() {
            return Err(Status::invalid_argument(format!(
                "GetManifests has {} base_manifest_ids for {} manifest_ids: send one per id, or none",
                r.base_manifest_ids.len(),
                r.manifest_ids.len()
            )));
        }
        let mut wanted = Vec::with_capacity(r.manifest_ids.len());
        for (i, id) in r.manifest_ids.iter().enumerate() {
            let id = to_status(manifest_id("manifest_ids", id).map_err(Error::from))?;
            let base = match r.base_manifest_ids.get(i).filter(|b| !b.is_empty()) {
                None => None,
                Some(b) => Some(to_status(
                    manifest_id("base_manifest_ids", b).map_err(Error::from),
                )?),
            };
            wanted.push((id, base));
        }
        let (store, scopes) = (self.store.clone(), self.scopes.clone());
        let scoped = caller.scope(&r.folder).map(str::to_owned);
        let manifests = to_status(
            blocking(move || {
                let mut budget = GET_MANIFESTS_BYTES;
                let mut out = Vec::with_capacity(wanted.len());
                for (id, base) in wanted {
                    let content = if budget == 0 {
                        None
                    } else {
                        manifest_answer(&*store, &scopes, scoped.as_deref(), id, base)?
                    };
                    let answer = pb::GetManifestResponse { content };
                    let len = prost::Message::encoded_len(&answer);
                    if len > budget {
                        // Past the budget: the client asks for this one alone.
                        budget = 0;
                        out.push(pb::GetManifestResponse::default());
                    } else {
                        budget -= len;
                        out.push(answer);
                    }
                }
                Ok(out)
            })
            .await,
        )?;
        Ok(Response::new(pb::GetManifestsResponse { manifests }))
    }
    type GetChunksStream = BoxStream<pb::GetChunksResponse>;

    async fn get_chunks(
        &self,
        req: Request<pb::GetChunksRequest>,
    ) -> Result<Response<Self::GetChunksStream>, Status> {
        self.get_chunks_rpc(req).await
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let who = Who::of(&req);
        let r = req.into_inner();
        let caller = self
            .authz
            .authorize(who, "History", &r.folder, Need::Read)
            .await?;
        let _turn = self.gates.enter(&caller.name()).await;
        let raw = r.path.is_empty() && !r.raw_path.is_empty();
        let path = if raw {
            lbsync_proto::raw_path::from_raw(&r.raw_path)
                .map_err(Error::from)
                .and_then(|p| SyncPath::new(p).map_err(Error::from))
        } else {
            SyncPath::from_bytes(&r.path).map_err(Error::from)
        };
        let path = to_status(path)?;
        let folders = self.folders.clone();
        let max = self.limits.max_history as usize;
        let want = r.version;
        let (versions, truncated) =
            to_status(blocking(move || folders.history(&r.folder, &path, max)).await)?;
        // One version asked for: its entry alone, without the path the client sent.
        let versions = versions
            .into_iter()
            .filter(|e| want == 0 || e.version == want)
            .map(|e| {
                let mut e = pb::Entry::from(e);
                if want != 0 {
                    e.path = Bytes::new();
                } else if raw {
                    e = e.with_raw_path();
                }
                e
            })
            .collect();
        Ok(Response::new(pb::HistoryResponse {
            versions,
            truncated,
        }))
    }

    async fn get_folder_keys(
        &self,
        req: Request<pb::GetFolderKeysRequest>,
    ) -> Result<Response<pb::FolderKeys>, Status> {
        let who = Who::of(&req);
        let r = req.into_inner();
        to_status(check_folder_name(&r.folder))?;
        let caller = self
            .authz
            .authorize(who, "GetFolderKeys", &r.folder, Need::Read)
            .await?;
        let _turn = self.gates.enter(&caller.name()).await;
        let folders = self.folders.clone();
        let keys = to_status(blocking(move || folders.keys(&r.folder)).await)?;
        Ok(Response::new(keys))
    }

    async fn set_folder_keys(
        &self,
        req: Request<pb::SetFolderKeysRequest>,
    ) -> Result<Response<pb::FolderKeys>, Status> {
        let who = Who::of(&req);
        let r = req.into_inner();
        to_status(check_folder_name(&r.folder))?;
        let caller = self
            .authz
            .authorize(who, "SetFolderKeys", &r.folder, Need::Write)
            .await?;
        let _turn = self.gates.enter(&caller.name()).await;
        to_status(crate::sealed::check_wrapped_keys(&r.folder, &r.wrapped))?;
        let folders = self.folders.clone();
        let (folder, expected) = (r.folder.clone(), r.expected_generation);
        let keys =
            to_status(blocking(move || folders.set_keys(&folder, expected, r.wrapped)).await)?;
        let mut kinds: Vec<&str> = keys.wrapped.iter().map(|w| w.kind.as_str()).collect();
        kinds.sort_unstable();
        info!(
            "folder {} {} by {}: generation {}, wrapped for {}",
            r.folder,
            if expected == 0 {
                "made encrypted"
            } else {
                "re-keyed"
            },
            caller.name(),
            keys.generation,
            kinds.join(", ")
        );
        Ok(Response::new(keys))
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
        to_status(check_device(&r.device).map_err(Error::from))?;
        let _turn = self.gates.enter(&caller.name()).await;
        let path = to_status(SyncPath::from_bytes(&r.path).map_err(Error::from))?;
        let folders = self.folders.clone();
        let folder = r.folder.clone();
        let (old, current) = to_status(
            blocking(move || {
                if folders.encrypted(&folder)? {
                    // The old version's metadata was sealed for its own version.
                    return Err(Error::Precondition(format!(
                        "folder {folder} is encrypted: restore is done by the client, which \
                         commits the old version's manifest again"
                    )));
                }
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
        let mut unbounded = u64::MAX;
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
                &mut unbounded,
            )
            .await,
        )?;
        Ok(Response::new(outcome.into()))
    }
}
