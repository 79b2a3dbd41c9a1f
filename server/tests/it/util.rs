//! A server on 127.0.0.1 with a temp store, and helpers speaking the generated stubs.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use lbsync_chunkstore::{Chunk, ChunkParams, Chunker, Manifest, PackStore};
use lbsync_proto::pb::sync_client::SyncClient;
use lbsync_proto::wire::encode_chunk;
use lbsync_proto::{
    CommitOutcome, CommitRequest, Content, Entry, PROTOCOL_VERSION, SyncPath, ids_to_bytes, pb,
};
use lbsync_server::ServerConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Adds `authorization: Bearer <token>` to every call when it has a token.
#[derive(Clone)]
pub(crate) struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            r.metadata_mut().insert("authorization", t.clone());
        }
        Ok(r)
    }
}

/// A client of the generated stubs, with or without a token.
pub(crate) type Client = SyncClient<InterceptedService<Channel, Bearer>>;

/// A client of the server at `addr`, sending `token` when given.
pub(crate) async fn connect(addr: SocketAddr, token: Option<&str>) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    with_token(channel, token)
}

/// A client on `channel`, sending `token` when given.
pub(crate) fn with_token(channel: Channel, token: Option<&str>) -> Client {
    let bearer = Bearer(token.map(|t| format!("Bearer {t}").parse().unwrap()));
    SyncClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20)
}

pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<lbsync_server::Result<()>>>,
}

impl TestServer {
    pub(crate) async fn start(dir: &Path) -> Self {
        Self::start_with(dir, ServerConfig::default()).await
    }

    pub(crate) async fn start_with(dir: &Path, config: ServerConfig) -> Self {
        Self::start_store(PackStore::open(dir).unwrap(), config).await
    }

    /// A server on an open store: the test keeps a handle to look at (or change) its metadata.
    pub(crate) async fn start_store(store: PackStore, config: ServerConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(lbsync_server::run(listener, store, config, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    pub(crate) async fn client(&self) -> Client {
        connect(self.addr, None).await
    }

    pub(crate) async fn client_with_token(&self, token: Option<&str>) -> Client {
        connect(self.addr, token).await
    }

    pub(crate) async fn stop(self) {
        self.stop_result().await.unwrap();
    }

    /// Stops the server and returns how its shutdown went (its last flush can fail).
    pub(crate) async fn stop_result(mut self) -> lbsync_server::Result<()> {
        self.stop.take().unwrap().send(()).unwrap();
        self.handle.take().unwrap().await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(h) = &self.handle {
            h.abort();
        }
    }
}

pub(crate) async fn handshake(c: &mut Client, folder: &str) -> pb::HandshakeResponse {
    c.handshake(pb::HandshakeRequest {
        protocol_version: PROTOCOL_VERSION,
        folder: folder.into(),
        device: "test".into(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// Chunks `data`, uploads the chunks the server lacks, and returns the manifest and how many
/// chunks were sent.
pub(crate) async fn upload(c: &mut Client, data: &[u8]) -> (Manifest, usize) {
    upload_with(c, data, ChunkParams::DEFAULT).await
}

/// [`upload`] with other chunking parameters.
pub(crate) async fn upload_with(
    c: &mut Client,
    data: &[u8],
    params: ChunkParams,
) -> (Manifest, usize) {
    let chunks: Vec<_> = Chunker::new(data, params).map(|r| r.unwrap().1).collect();
    let manifest = Manifest::new(chunks.iter().map(Chunk::chunk_ref).collect());
    let ids: Vec<_> = chunks.iter().map(|c| c.id()).collect();
    let missing = missing(c, &ids).await;
    let to_send: Vec<_> = chunks
        .iter()
        .filter(|c| missing.contains(&c.id()))
        .map(|c| encode_chunk(c.id(), c.data()))
        .collect();
    let sent = to_send.len();
    let msgs: Vec<pb::PutChunksRequest> = to_send
        .chunks(64)
        .map(|b| pb::PutChunksRequest {
            chunks: b.to_vec(),
            ..Default::default()
        })
        .collect();
    c.put_chunks(tokio_stream::iter(msgs)).await.unwrap();
    (manifest, sent)
}

/// The ids the server lacks.
pub(crate) async fn missing(
    c: &mut Client,
    ids: &[lbsync_chunkstore::ChunkId],
) -> Vec<lbsync_chunkstore::ChunkId> {
    let resp = c
        .missing_chunks(pb::MissingChunksRequest {
            ids: ids_to_bytes(ids),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    lbsync_proto::ids_from_bytes(&resp.missing).unwrap()
}

pub(crate) fn file_commit(
    folder: &str,
    path: &str,
    m: &Manifest,
    base: u64,
    content: Content,
) -> pb::CommitRequest {
    CommitRequest {
        folder: folder.into(),
        entry: Entry::file(SyncPath::new(path).unwrap(), m, "test"),
        base_version: base,
        content: Some(content),
    }
    .into()
}

pub(crate) async fn commit(c: &mut Client, req: pb::CommitRequest) -> CommitOutcome {
    c.commit(req)
        .await
        .unwrap()
        .into_inner()
        .try_into()
        .unwrap()
}

pub(crate) fn committed(o: CommitOutcome) -> Entry {
    match o {
        CommitOutcome::Committed(e) => e,
        CommitOutcome::Conflict(e) => panic!("unexpected conflict with {e:?}"),
    }
}

pub(crate) fn seeded(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; len];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Downloads a manifest's chunks and joins them.
pub(crate) async fn download(c: &mut Client, m: &Manifest) -> Vec<u8> {
    let ids: Vec<_> = m.chunks().iter().map(|r| r.id).collect();
    let mut stream = c
        .get_chunks(pb::GetChunksRequest {
            ids: ids_to_bytes(&ids),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = std::collections::HashMap::new();
    while let Some(msg) = stream.message().await.unwrap() {
        for cd in msg.chunks {
            let chunk = lbsync_proto::wire::decode_chunk(cd, 1 << 20).unwrap();
            got.insert(chunk.id(), chunk.into_data());
        }
    }
    let mut out = Vec::new();
    for id in ids {
        out.extend_from_slice(&got[&id]);
    }
    out
}

pub(crate) fn bytes(s: &str) -> Bytes {
    Bytes::from(s.to_owned())
}
