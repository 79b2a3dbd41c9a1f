//! A hostile server double: a gRPC server on 127.0.0.1 that forwards every call to a real
//! lbsync-server (passing the caller's `authorization` through) and tampers with the answers
//! as its [`Tamper`] mode says. Stopped when dropped.
//!
//! Each mode counts the answers it actually changed ([`HostileProxy::tampered`]), so that a test
//! can tell "the client caught it" from "there was nothing to catch".

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use lbsync_proto::pb;
use lbsync_proto::pb::sync_client::SyncClient;
use lbsync_proto::pb::sync_server::{Sync, SyncServer};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

/// What the proxy does to the answers it forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tamper {
    /// Forward everything unchanged.
    None,
    /// GetChunks: flip one byte of a chunk's content (decompressed first when the server sent
    /// it compressed, so the client sees well-formed data of the right length that is wrong).
    FlipChunkByte,
    /// GetChunks: exchange the contents of two different chunks, each keeping its place and id.
    SwapChunks,
    /// Changes: exchange the `path` fields of two entries.
    SwapPaths,
    /// Changes: present an older version of a path (from History) as the current one, with the
    /// current version and seq.
    Replay,
    /// Changes: present the oldest kept version of a path (from History, as it was sealed, its
    /// own version number) as current: a rollback to a state the client has moved past.
    Rollback,
    /// Changes: give an entry another entry's `sealed` blob.
    SwapSealed,
}

/// The proxy; its URL is what the client under test dials.
pub(crate) struct HostileProxy {
    pub(crate) url: String,
    hits: Arc<AtomicUsize>,
    frames: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
}

impl HostileProxy {
    /// Listens on 127.0.0.1:0 and forwards to the server at `upstream`.
    pub(crate) async fn start(upstream: &str, mode: Tamper) -> Self {
        Self::start_with(upstream, mode, None).await
    }

    /// As [`Self::start`], and runs `hook` before forwarding each GetManifests call: the moment a
    /// client has planned a group of downloads and not yet written them.
    pub(crate) async fn start_with_hook(upstream: &str, hook: Hook) -> Self {
        Self::start_with(upstream, Tamper::None, Some(hook)).await
    }

    async fn start_with(upstream: &str, mode: Tamper, on_get_manifests: Option<Hook>) -> Self {
        let channel = tonic::transport::Endpoint::from_shared(upstream.to_owned())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let frames = Arc::new(AtomicUsize::new(0));
        let proxy = Proxy {
            up: SyncClient::new(channel)
                .max_decoding_message_size(LIMIT)
                .max_encoding_message_size(LIMIT),
            mode,
            hits: hits.clone(),
            frames: frames.clone(),
            on_get_manifests,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let service = SyncServer::new(proxy)
            .max_decoding_message_size(LIMIT)
            .max_encoding_message_size(LIMIT);
        let handle = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            url: format!("http://{addr}"),
            hits,
            frames,
            stop: Some(tx),
            handle,
        }
    }

    /// How many answers the proxy changed so far.
    pub(crate) fn tampered(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// How many GetChunks answers had chunks swapped inside a together frame.
    pub(crate) fn frames_tampered(&self) -> usize {
        self.frames.load(Ordering::SeqCst)
    }
}

impl Drop for HostileProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.handle.abort();
    }
}

/// Larger than anything the server or the client send in one message.
const LIMIT: usize = 80 << 20;

/// What the proxy runs at a call it sees.
pub(crate) type Hook = Arc<dyn Fn() + Send + std::marker::Sync>;

#[derive(Clone)]
struct Proxy {
    up: SyncClient<Channel>,
    mode: Tamper,
    hits: Arc<AtomicUsize>,
    frames: Arc<AtomicUsize>,
    on_get_manifests: Option<Hook>,
}

/// The caller's token, if any.
fn auth_of<T>(req: &Request<T>) -> Option<MetadataValue<Ascii>> {
    req.metadata().get("authorization").cloned()
}

/// `msg` as a request upstream, with the caller's token.
fn up_req<T>(msg: T, auth: &Option<MetadataValue<Ascii>>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(a) = auth {
        r.metadata_mut().insert("authorization", a.clone());
    }
    r
}

/// Forwards a unary call.
macro_rules! unary {
    ($self:ident, $req:ident, $method:ident) => {{
        let auth = auth_of(&$req);
        let r = $self
            .up
            .clone()
            .$method(up_req($req.into_inner(), &auth))
            .await?;
        Ok(Response::new(r.into_inner()))
    }};
}

type Out<T> = ReceiverStream<Result<T, Status>>;

impl Proxy {
    fn hit(&self) {
        self.hits.fetch_add(1, Ordering::SeqCst);
    }

    /// Tampers with one Changes message as the mode says (History asked with `auth`).
    async fn tamper_changes(
        &self,
        folder: &str,
        auth: &Option<MetadataValue<Ascii>>,
        m: &mut pb::ChangesResponse,
    ) {
        match self.mode {
            Tamper::SwapPaths | Tamper::SwapSealed => {
                fn path(e: &pb::Entry) -> &bytes::Bytes {
                    if e.path.is_empty() {
                        &e.raw_path
                    } else {
                        &e.path
                    }
                }
                let Some((i, j)) = two_distinct(&m.entries, |e| (path(e), &e.sealed)) else {
                    return;
                };
                let (a, b) = pair(&mut m.entries, i, j);
                if self.mode == Tamper::SwapPaths {
                    // A path goes as text or raw (`raw_path`): swap both.
                    std::mem::swap(&mut a.path, &mut b.path);
                    std::mem::swap(&mut a.raw_path, &mut b.raw_path);
                } else {
                    std::mem::swap(&mut a.sealed, &mut b.sealed);
                }
                self.hit();
            }
            Tamper::Replay | Tamper::Rollback => {
                for e in m.entries.iter_mut() {
                    if e.deleted || e.version < 2 {
                        continue;
                    }
                    let h = self
                        .up
                        .clone()
                        .history(up_req(
                            pb::HistoryRequest {
                                folder: folder.to_owned(),
                                path: e.path.clone(),
                                version: 0,
                                raw_path: e.raw_path.clone(),
                            },
                            auth,
                        ))
                        .await;
                    let Ok(h) = h else { continue };
                    // Newest first: a replay takes the newest older version, a rollback the
                    // oldest.
                    let mut older = h.into_inner().versions.into_iter().filter(|o| {
                        o.version < e.version && !o.deleted && o.manifest_id != e.manifest_id
                    });
                    let older = if self.mode == Tamper::Replay {
                        older.next()
                    } else {
                        older.last()
                    };
                    if let Some(mut old) = older {
                        if self.mode == Tamper::Replay {
                            old.version = e.version;
                        }
                        old.seq = e.seq;
                        old.committed_ns = e.committed_ns;
                        *e = old;
                        self.hit();
                    }
                }
            }
            _ => {}
        }
    }

    /// Tampers with a whole GetChunks answer as the mode says.
    fn tamper_chunks(&self, msgs: &mut [pb::GetChunksResponse]) {
        // Chunks in a together frame are opened to be tampered with, and packed again after.
        let mut framed = Vec::new();
        for m in msgs.iter_mut() {
            let had = !m.together.is_empty();
            let inside: Vec<bool> = m.chunks.iter().map(|c| had && c.data.is_empty()).collect();
            lbsync_proto::wire::unpack_answer_together(m, 64 << 20).unwrap();
            framed.extend(inside);
        }
        self.tamper_opened(msgs, &framed);
        for m in msgs.iter_mut() {
            if m.chunks.iter().any(|c| c.id.is_empty()) {
                lbsync_proto::wire::pack_answer_together(m).unwrap();
            }
        }
    }

    /// [`Self::tamper_chunks`] on the answer's chunks, all with their bytes; `framed` says which
    /// came in a frame (those the swap prefers, when there are any).
    fn tamper_opened(&self, msgs: &mut [pb::GetChunksResponse], framed: &[bool]) {
        let mut chunks: Vec<&mut pb::ChunkData> =
            msgs.iter_mut().flat_map(|m| m.chunks.iter_mut()).collect();
        if self.mode == Tamper::SwapChunks && framed.iter().filter(|f| **f).count() >= 2 {
            self.frames.fetch_add(1, Ordering::Relaxed);
            chunks = chunks
                .into_iter()
                .zip(framed)
                .filter_map(|(c, f)| f.then_some(c))
                .collect();
        }
        match self.mode {
            Tamper::FlipChunkByte => {
                let Some(c) = chunks.first_mut() else { return };
                if c.compression == pb::Compression::Zstd as i32 {
                    assert!(
                        c.base_ids.is_empty(),
                        "the proxy asked for no deltas, yet one came"
                    );
                    c.data = zstd::bulk::decompress(&c.data, c.raw_len as usize)
                        .unwrap()
                        .into();
                    c.compression = pb::Compression::None as i32;
                }
                let mut data = c.data.to_vec();
                let k = data.len() / 2;
                data[k] ^= 0x01;
                c.data = data.into();
                self.hit();
            }
            Tamper::SwapChunks => {
                // Chunks from a frame have no id: their bytes tell them apart.
                let Some((i, j)) = two_distinct(&chunks, |c| (&c.data, &c.data)) else {
                    return;
                };
                let (a, b) = pair(&mut chunks, i, j);
                std::mem::swap(&mut a.data, &mut b.data);
                std::mem::swap(&mut a.compression, &mut b.compression);
                std::mem::swap(&mut a.raw_len, &mut b.raw_len);
                std::mem::swap(&mut a.base_ids, &mut b.base_ids);
                self.hit();
            }
            _ => {}
        }
    }
}

/// The first two items that differ in both keys.
fn two_distinct<T, K: PartialEq>(
    items: &[T],
    key: impl Fn(&T) -> (&K, &K),
) -> Option<(usize, usize)> {
    let first = items.first()?;
    let (a0, a1) = key(first);
    items
        .iter()
        .position(|x| {
            let (b0, b1) = key(x);
            b0 != a0 && b1 != a1
        })
        .map(|j| (0, j))
}

/// Mutable references to items `i < j`.
fn pair<T>(items: &mut [T], i: usize, j: usize) -> (&mut T, &mut T) {
    let (l, r) = items.split_at_mut(j);
    (&mut l[i], &mut r[0])
}

#[tonic::async_trait]
impl Sync for Proxy {
    async fn handshake(
        &self,
        req: Request<pb::HandshakeRequest>,
    ) -> Result<Response<pb::HandshakeResponse>, Status> {
        unary!(self, req, handshake)
    }

    async fn missing_chunks(
        &self,
        req: Request<pb::MissingChunksRequest>,
    ) -> Result<Response<pb::MissingChunksResponse>, Status> {
        unary!(self, req, missing_chunks)
    }

    async fn get_signatures(
        &self,
        req: Request<pb::GetSignaturesRequest>,
    ) -> Result<Response<pb::GetSignaturesResponse>, Status> {
        unary!(self, req, get_signatures)
    }

    async fn put_chunks(
        &self,
        req: Request<Streaming<pb::PutChunksRequest>>,
    ) -> Result<Response<pb::PutChunksResponse>, Status> {
        let auth = auth_of(&req);
        let stream = req.into_inner().map_while(Result::ok);
        let r = self.up.clone().put_chunks(up_req(stream, &auth)).await?;
        Ok(Response::new(r.into_inner()))
    }

    async fn commit(
        &self,
        req: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        unary!(self, req, commit)
    }

    async fn commit_batch(
        &self,
        req: Request<pb::CommitBatchRequest>,
    ) -> Result<Response<pb::CommitBatchResponse>, Status> {
        unary!(self, req, commit_batch)
    }

    type ChangesStream = Out<pb::ChangesResponse>;

    async fn changes(
        &self,
        req: Request<pb::ChangesRequest>,
    ) -> Result<Response<Self::ChangesStream>, Status> {
        let auth = auth_of(&req);
        let r = req.into_inner();
        let folder = r.folder.clone();
        let mut upstream = self
            .up
            .clone()
            .changes(up_req(r, &auth))
            .await?
            .into_inner();
        let (tx, rx) = mpsc::channel(8);
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(m) = upstream.next().await {
                let m = match m {
                    Ok(mut m) => {
                        me.tamper_changes(&folder, &auth, &mut m).await;
                        Ok(m)
                    }
                    Err(s) => Err(s),
                };
                if tx.send(m).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_manifest(
        &self,
        req: Request<pb::GetManifestRequest>,
    ) -> Result<Response<pb::GetManifestResponse>, Status> {
        unary!(self, req, get_manifest)
    }

    async fn get_manifests(
        &self,
        req: Request<pb::GetManifestsRequest>,
    ) -> Result<Response<pb::GetManifestsResponse>, Status> {
        if let Some(hook) = &self.on_get_manifests {
            hook();
            self.hit();
        }
        unary!(self, req, get_manifests)
    }

    type GetChunksStream = Out<pb::GetChunksResponse>;

    async fn get_chunks(
        &self,
        req: Request<pb::GetChunksRequest>,
    ) -> Result<Response<Self::GetChunksStream>, Status> {
        let auth = auth_of(&req);
        let mut r = req.into_inner();
        if self.mode == Tamper::FlipChunkByte {
            // No deltas: the proxy must be able to decode what it flips.
            r.bases.clear();
        }
        let mut upstream = self
            .up
            .clone()
            .get_chunks(up_req(r, &auth))
            .await?
            .into_inner();
        // A GetChunks answer is finite: take it all, tamper, send it on.
        let mut msgs = Vec::new();
        let mut end = None;
        while let Some(m) = upstream.next().await {
            match m {
                Ok(m) => msgs.push(m),
                Err(s) => {
                    end = Some(s);
                    break;
                }
            }
        }
        self.tamper_chunks(&mut msgs);
        let (tx, rx) = mpsc::channel(msgs.len() + 1);
        for m in msgs {
            tx.send(Ok(m)).await.unwrap();
        }
        if let Some(s) = end {
            tx.send(Err(s)).await.unwrap();
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        unary!(self, req, history)
    }

    async fn restore(
        &self,
        req: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        unary!(self, req, restore)
    }

    async fn get_folder_keys(
        &self,
        req: Request<pb::GetFolderKeysRequest>,
    ) -> Result<Response<pb::FolderKeys>, Status> {
        unary!(self, req, get_folder_keys)
    }

    async fn set_folder_keys(
        &self,
        req: Request<pb::SetFolderKeysRequest>,
    ) -> Result<Response<pb::FolderKeys>, Status> {
        unary!(self, req, set_folder_keys)
    }
}
