//! The server, as the sync engine sees it: typed calls over the generated stubs, with byte counts.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use lbsync_chunkstore::{Chunk, ChunkId, ChunkParams, Manifest, ManifestId};
use lbsync_proto::convert::{MAX_BATCH_COMMITS, batch_to_pb, delta_from_pb};
use lbsync_proto::http2::{CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};
use lbsync_proto::pb::sync_client::SyncClient;
use lbsync_proto::wire::{chunk_bases, decode_chunk_against, unpack_answer_together};
use lbsync_proto::{
    BatchOutcome, CommitOutcome, CommitRequest, Entry, PROTOCOL_VERSION, SyncPath, error_chain,
    ids_from_bytes, ids_to_bytes, pb,
};
use prost::Message;
use tonic::codegen::http::Uri;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing::warn;

use crate::codec::FolderCodec;
use crate::error::{Error, Result};
use crate::tls::{Dialer, Trust};

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("authorization", t.clone());
        }
        Ok(req)
    }
}

fn stub(channel: Channel, auth: Auth) -> SyncClient<InterceptedService<Channel, Auth>> {
    SyncClient::with_interceptor(channel, auth)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// A stub for the calls whose messages are many similar entries (CommitBatch, Changes): it
/// accepts zstd answers (a server that does not compress ignores that), and with `send` (the
/// server said it accepts zstd) compresses its requests. Chunks are compressed one by one
/// already and go uncompressed through the plain stub.
fn packed(
    client: &SyncClient<InterceptedService<Channel, Auth>>,
    send: bool,
) -> SyncClient<InterceptedService<Channel, Auth>> {
    use tonic::codec::CompressionEncoding::Zstd;
    let c = client.clone().accept_compressed(Zstd);
    if send { c.send_compressed(Zstd) } else { c }
}

/// Batches of fewer commits go without message compression (see [`packed`]).
const PACKED_COMMITS: usize = 8;

/// A connected server folder.
pub struct Remote {
    client: SyncClient<InterceptedService<Channel, Auth>>,
    link: Link,
    auth: Auth,
    /// The URL.
    pub url: String,
    /// The folder.
    pub folder: String,
    /// The store's chunking parameters.
    pub params: ChunkParams,
    /// The folder's journal head at the handshake.
    pub head: u64,
    /// The commit time of the entry at `head` (0: unknown), `HandshakeResponse.head_committed_ns`.
    pub head_committed_ns: i64,
    /// The id of the server's store (empty from a server too old to say).
    pub store_id: String,
    /// This client may only read the folder.
    pub read_only: bool,
    /// The server says the folder is end-to-end encrypted.
    pub encrypted: bool,
    /// The server takes chunks compressed together (`PutChunksRequest.together`).
    pub chunks_together: bool,
    /// The server takes metadata-only commits (`Content::Same`) and sends entries whose content
    /// is their previous version's without their manifest id
    /// (`HandshakeResponse.same_content_commits`).
    pub same_content: bool,
    /// The server accepts zstd-compressed CommitBatch requests (`HandshakeResponse.compression`).
    pub compress: bool,
    /// The server takes and sends sealed paths raw (`HandshakeResponse.raw_sealed_paths`).
    pub raw_paths: bool,
    /// The server answers GetSignatures and takes block deltas
    /// (`HandshakeResponse.block_deltas`).
    pub block_deltas: bool,
    /// How the folder's chunks, manifests and entries look on the server (see
    /// [`Remote::set_codec`]).
    codec: FolderCodec,
    /// Files the last [`Remote::changes_until_caught_up`] heard as the same content as their
    /// previous version, without a manifest id: that version's commit time, by path.
    same_as: HashMap<SyncPath, i64>,
    /// Entries the server sent that could not be taken (not sealed by this folder's key, or a
    /// path refused here), said in words, until [`Remote::take_refused`].
    refused: Vec<String>,
    max_ids: usize,
    /// Payload bytes sent (requests) and received (answers).
    pub sent: u64,
    /// See `sent`.
    pub received: u64,
    /// The folder's expiry horizon as the last Changes replay said it (see
    /// `ChangesResponse.expired_seq`): a cursor below it may have missed a forgotten deletion.
    pub expired_seq: u64,
}

/// Per chunk, chunks this side holds that it may come as a delta against: their ids and their
/// concatenated bytes.
pub type DeltaBases = HashMap<ChunkId, (Vec<ChunkId>, Vec<u8>)>;

/// A chunk from the server, checked against its id; a delta only against the bases offered.
fn receive_chunk(c: pb::ChunkData, bases: &DeltaBases, max_len: u32) -> Result<Chunk> {
    let bad = |reason: String| Error::Protocol {
        what: "GetChunks",
        reason,
    };
    let named = chunk_bases(&c).map_err(|e| bad(e.to_string()))?;
    let base = if named.is_empty() {
        None
    } else {
        let id =
            ChunkId::from_slice(&c.id).ok_or_else(|| bad("a chunk id is not 32 bytes".into()))?;
        match bases.get(&id) {
            Some((offered, bytes)) if *offered == named => Some(bytes.as_slice()),
            _ => {
                return Err(bad(format!(
                    "chunk {id} came as a delta against chunks not offered"
                )));
            }
        }
    };
    decode_chunk_against(c, max_len, base).map_err(Error::protocol("GetChunks"))
}

/// A plain-text handshake that failed against a server that speaks TLS: a setting to fix, said
/// so, not a server to wait for.
async fn plaintext_to_tls(link: &Link, s: &tonic::Status) -> Option<Error> {
    if link.tls.is_some() || s.code() == tonic::Code::Unauthenticated {
        return None;
    }
    let uri: Uri = link.url.parse().ok()?;
    crate::tls::speaks_tls(&uri).await.then(|| Error::Tls {
        url: link.url.clone(),
        reason: format!(
            "it speaks TLS, and this URL asks for plain text ({}): use an https:// URL",
            s.message()
        ),
    })
}

/// What a commit of missing chunks answers.
pub enum Committed {
    /// The outcome.
    Outcome(CommitOutcome),
    /// The server lacks these chunks.
    MissingChunks(Vec<ChunkId>),
    /// The server does not know a manifest the commit referred to (send it in full).
    UnknownManifest,
}

/// How to reach a server: its token and which certificates to trust.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// The bearer token.
    pub token: Option<String>,
    /// For `https://` URLs: whom to trust.
    pub trust: Trust,
}

/// Opens connections to the server: plain HTTP/2, or TLS through our own rustls dialer.
#[derive(Clone)]
struct Link {
    endpoint: Endpoint,
    tls: Option<Dialer>,
    url: String,
}

impl Link {
    fn new(url: &str, trust: &Trust) -> Result<Self> {
        // A URL that can never work is a mistake to fix, not a server to wait for.
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| Error::BadUrl(url.to_owned()))?;
        let uri: Uri = url.parse().map_err(|_| Error::BadUrl(url.to_owned()))?;
        let tls = match scheme {
            "http" => None,
            "https" => Some(Dialer::new(&uri, trust)?),
            _ => return Err(Error::BadUrl(url.to_owned())),
        };
        // Over TLS the dialer makes the connection: the endpoint only carries HTTP/2's settings.
        let target = if tls.is_some() {
            format!("http://{rest}")
        } else {
            url.to_owned()
        };
        let endpoint = Endpoint::from_shared(target)
            .map_err(|_| Error::BadUrl(url.to_owned()))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        Ok(Self {
            endpoint,
            tls,
            url: url.to_owned(),
        })
    }

    /// A new connection.
    async fn connect(&self) -> Result<Channel> {
        let res = match &self.tls {
            None => self.endpoint.connect().await,
            Some(dialer) => {
                let dialer = dialer.clone();
                self.endpoint
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let dialer = dialer.clone();
                        async move { dialer.dial().await }
                    }))
                    .await
            }
        };
        let e = match res {
            Ok(channel) => return Ok(channel),
            Err(e) => e,
        };
        if let Some(reason) = crate::tls::failure_in(&e) {
            return Err(Error::Tls {
                url: self.url.clone(),
                reason,
            });
        }
        let refused = error_chain(&e).contains("refused");
        if self.tls.is_none() && !refused {
            let uri: Option<Uri> = self.url.parse().ok();
            if let Some(uri) = uri
                && crate::tls::speaks_tls(&uri).await
            {
                return Err(Error::Tls {
                    url: self.url.clone(),
                    reason: "it speaks TLS, and this URL asks for plain text: use an https:// URL"
                        .into(),
                });
            }
        }
        Err(Error::Connect {
            url: self.url.clone(),
            reason: error_chain(&e),
        })
    }
}

/// The most chunk bytes one GetChunks message's together frame may declare (the client's largest
/// message).
const TOGETHER_LIMIT: u64 = 64 << 20;

/// The servers a `--server` value names: one URL, or several separated by commas.
fn server_urls(urls: &str) -> Result<Vec<&str>> {
    let list: Vec<&str> = urls.split(',').map(str::trim).collect();
    if list.iter().any(|u| u.is_empty()) {
        return Err(Error::BadUrl(urls.to_owned()));
    }
    Ok(list)
}

/// The server of each `--server` list that last answered a handshake in this process: a watch
/// that lost its server and failed over keeps going to the one that worked instead of trying
/// the dead one first at every reconnect.
static LAST_GOOD: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

fn last_good(urls: &str) -> Option<String> {
    let last = LAST_GOOD.lock().unwrap_or_else(|e| e.into_inner());
    last.iter().find(|(l, _)| l == urls).map(|(_, u)| u.clone())
}

fn remember_good(urls: &str, url: &str) {
    let mut last = LAST_GOOD.lock().unwrap_or_else(|e| e.into_inner());
    match last.iter_mut().find(|(l, _)| l == urls) {
        Some(entry) => entry.1 = url.to_owned(),
        None => last.push((urls.to_owned(), url.to_owned())),
    }
}

/// The order to try `list` in: the one that worked last first, then the others as given.
fn try_order<'a>(list: &[&'a str], good: Option<&str>) -> Vec<&'a str> {
    let mut order: Vec<&str> = list.iter().copied().filter(|u| Some(*u) == good).collect();
    order.extend(list.iter().copied().filter(|u| Some(*u) != good));
    order
}

impl Remote {
    /// Connects and shakes hands (which creates the folder if needed).
    pub async fn connect(
        url: &str,
        token: Option<&str>,
        folder: &str,
        device: &str,
    ) -> Result<Self> {
        let access = Access {
            token: token.map(str::to_owned),
            trust: Trust::default(),
        };
        Self::connect_with(url, &access, folder, device).await
    }

    /// [`Remote::connect`] with the certificates to trust.
    ///
    /// `urls` may list several servers of one store, separated by commas: they are tried in
    /// order (the one that answered last in this process first), and the first that answers
    /// the handshake is used. A server that cannot be reached
    /// or answers "unavailable" (it lost its database or object store) is passed over; any other
    /// refusal (a bad token, an untrusted certificate) is final, since the next server of the
    /// same store would give it too. A sync that loses its server fails as offline and the next
    /// one connects again through this list, so a client fails over to the next server and
    /// resumes from its cursor; the chunks it already uploaded are in the shared store and are
    /// not sent again.
    pub async fn connect_with(
        urls: &str,
        access: &Access,
        folder: &str,
        device: &str,
    ) -> Result<Self> {
        let list = try_order(&server_urls(urls)?, last_good(urls).as_deref());
        let (last, first) = list
            .split_last()
            .ok_or_else(|| Error::BadUrl(String::new()))?;
        for (i, url) in first.iter().enumerate() {
            match Self::connect_one(url, access, folder, device).await {
                Err(e) if e.is_offline() => tracing::warn!("{e}; trying {}", list[i + 1]),
                done => return done.inspect(|_| remember_good(urls, url)),
            }
        }
        Self::connect_one(last, access, folder, device)
            .await
            .inspect(|_| remember_good(urls, last))
    }

    /// Connects to one server and shakes hands.
    async fn connect_one(url: &str, access: &Access, folder: &str, device: &str) -> Result<Self> {
        let link = Link::new(url, &access.trust)?;
        let channel = link.connect().await?;
        let auth = match &access.token {
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                Error::Usage("the token has characters that cannot go in a header".into())
            })?),
            None => None,
        };
        let auth = Auth(auth);
        let mut client = stub(channel, auth.clone());
        let req = pb::HandshakeRequest {
            protocol_version: PROTOCOL_VERSION,
            folder: folder.to_owned(),
            device: device.to_owned(),
        };
        let hs = match client.handshake(req).await {
            Ok(hs) => hs.into_inner(),
            Err(s) => {
                return Err(match (plaintext_to_tls(&link, &s).await, s.code()) {
                    (Some(e), _) => e,
                    (None, tonic::Code::Unavailable) => Error::Connect {
                        url: url.to_owned(),
                        reason: s.message().to_owned(),
                    },
                    _ => Error::rpc("Handshake")(s),
                });
            }
        };
        let params = hs
            .params
            .ok_or(lbsync_proto::ConvertError::MissingField("params"))
            .and_then(ChunkParams::try_from)
            .map_err(Error::protocol("Handshake"))?;
        Ok(Self {
            client,
            link,
            auth,
            url: url.to_owned(),
            folder: folder.to_owned(),
            params,
            head: hs.head,
            head_committed_ns: hs.head_committed_ns,
            store_id: hs.store_id,
            read_only: hs.read_only,
            encrypted: hs.encrypted,
            chunks_together: hs.chunks_together,
            same_content: hs.same_content_commits,
            compress: hs.compression.iter().any(|c| c == "zstd"),
            raw_paths: hs.raw_sealed_paths,
            block_deltas: hs.block_deltas,
            codec: FolderCodec::Plain,
            same_as: HashMap::new(),
            refused: Vec::new(),
            max_ids: (hs.max_ids_per_request as usize).clamp(1, 65_536),
            sent: 0,
            received: 0,
            expired_seq: 0,
        })
    }

    /// The ids the server lacks, in batches the server accepts.
    pub async fn missing(&mut self, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
        let mut out = Vec::new();
        for batch in ids.chunks(self.max_ids) {
            let req = pb::MissingChunksRequest {
                ids: ids_to_bytes(batch),
                folder: self.folder.clone(),
            };
            self.sent += req.encoded_len() as u64;
            let resp = self
                .client
                .missing_chunks(req)
                .await
                .map_err(Error::rpc("MissingChunks"))?
                .into_inner();
            self.received += resp.encoded_len() as u64;
            out.extend(ids_from_bytes(&resp.missing).map_err(Error::protocol("MissingChunks"))?);
        }
        Ok(out)
    }

    /// The block signatures of chunks the server holds in the folder, in order (`None` for one
    /// it does not hold). At most [`Self::max_ids`] ids.
    pub async fn signatures(
        &mut self,
        ids: &[ChunkId],
    ) -> Result<Vec<Option<lbsync_chunkstore::Signature>>> {
        let req = pb::GetSignaturesRequest {
            ids: ids_to_bytes(ids),
            folder: self.folder.clone(),
        };
        self.sent += req.encoded_len() as u64;
        let resp = self
            .client
            .get_signatures(req)
            .await
            .map_err(Error::rpc("GetSignatures"))?
            .into_inner();
        self.received += resp.encoded_len() as u64;
        if resp.signatures.len() != ids.len() {
            return Err(Error::Protocol {
                what: "GetSignatures",
                reason: format!(
                    "{} signatures for {} chunks",
                    resp.signatures.len(),
                    ids.len()
                ),
            });
        }
        resp.signatures
            .iter()
            .map(|s| {
                lbsync_proto::wire::signature_from_pb(s).map_err(Error::protocol("GetSignatures"))
            })
            .collect()
    }

    /// Starts a PutChunks call fed by the returned sender; await the handle for the answer.
    pub fn put_chunks(
        &self,
    ) -> (
        tokio::sync::mpsc::Sender<pb::PutChunksRequest>,
        tokio::task::JoinHandle<Result<pb::PutChunksResponse>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut client = self.client.clone();
        // The first message names the folder the chunks are for.
        let first = pb::PutChunksRequest {
            folder: self.folder.clone(),
            ..Default::default()
        };
        let handle = tokio::spawn(async move {
            use tokio_stream::StreamExt as _;
            let stream =
                tokio_stream::once(first).chain(tokio_stream::wrappers::ReceiverStream::new(rx));
            client
                .put_chunks(stream)
                .await
                .map(tonic::Response::into_inner)
                .map_err(Error::rpc("PutChunks"))
        });
        (tx, handle)
    }

    /// The folder's wrapped keys and their generation (0 and none: the folder is not
    /// encrypted).
    pub async fn folder_keys(&mut self) -> Result<pb::FolderKeys> {
        let resp = self
            .client
            .get_folder_keys(pb::GetFolderKeysRequest {
                folder: self.folder.clone(),
            })
            .await
            .map_err(Error::rpc("GetFolderKeys"))?
            .into_inner();
        Ok(resp)
    }

    /// Replaces the folder's wrapped keys if they are still at generation `expected` (0: makes
    /// the folder encrypted, which only an empty folder may become). Someone else changing them
    /// first is said so, to read them again.
    pub async fn set_folder_keys(
        &mut self,
        expected: u64,
        wrapped: Vec<pb::WrappedKey>,
    ) -> Result<pb::FolderKeys> {
        // The journal moves on from what the handshake said (see `take_head`).
        self.head_committed_ns = 0;
        let req = pb::SetFolderKeysRequest {
            folder: self.folder.clone(),
            expected_generation: expected,
            wrapped,
        };
        match self.client.set_folder_keys(req).await {
            Ok(resp) => Ok(resp.into_inner()),
            Err(s) if s.code() == tonic::Code::Aborted => Err(Error::Key(format!(
                "folder {}'s keys changed on the server meanwhile (another device): nothing was \
                 changed; run the command again",
                self.folder
            ))),
            Err(s) if s.code() == tonic::Code::FailedPrecondition => Err(Error::Refused {
                what: format!("make folder {} encrypted", self.folder),
                reason: s.message().to_owned(),
            }),
            Err(s) => Err(Error::rpc("SetFolderKeys")(s)),
        }
    }

    /// Sets how the folder's chunks, manifests and entries look on the server.
    pub fn set_codec(&mut self, codec: FolderCodec) {
        self.codec = codec;
    }

    /// How the folder's chunks, manifests and entries look on the server.
    pub fn codec(&self) -> &FolderCodec {
        &self.codec
    }

    /// The files the last replay sent as the same content as their previous version (see
    /// `Entry.same_content_base_ns`), with that version's commit time, by path.
    pub fn take_same_as(&mut self) -> HashMap<SyncPath, i64> {
        std::mem::take(&mut self.same_as)
    }

    /// What the server sent that could not be taken since the last call, in words.
    pub fn take_refused(&mut self) -> Vec<String> {
        std::mem::take(&mut self.refused)
    }

    /// An entry from the server in the clear, or why it cannot be taken.
    pub fn open_entry(&self, e: pb::Entry) -> std::result::Result<Entry, String> {
        let e = Entry::try_from(e)
            .map_err(|err| format!("the server sent an entry that is refused here: {err}"))?;
        self.codec.open_entry(e).map_err(|err| err.to_string())
    }

    /// An entry of an answer to a commit, in the clear; one that does not open is an error.
    fn answered_entry(&self, what: &'static str, e: Entry) -> Result<Entry> {
        self.codec.open_entry(e).map_err(|err| Error::Protocol {
            what,
            reason: err.to_string(),
        })
    }

    /// A commit request as the server takes it: its entry sealed in an encrypted folder. The
    /// sealed entry's manifest id and version are not sent: the server sets both (from the
    /// content, and base + 1), and the sealed metadata authenticates them.
    fn sealed_request(&self, mut req: CommitRequest) -> Result<CommitRequest> {
        req.entry = self.codec.seal_entry(req.entry, req.base_version)?;
        if self.codec.is_sealed() {
            req.entry.manifest = None;
            req.entry.version = 0;
        }
        Ok(req)
    }

    /// The entry a brief commit answer (`CommitResponse.brief`) stands for: `req`'s, in the
    /// clear, at the version, seq and time the server gave, with the manifest its content
    /// names. In an encrypted folder the entry was sealed for base + 1, which the version must
    /// be (else what the server keeps does not open at the version it said).
    fn committed_entry(&self, req: &CommitRequest, c: &pb::Committed) -> Result<Entry> {
        if self.codec.is_sealed() && c.version != req.base_version + 1 {
            return Err(Error::Protocol {
                what: "Commit",
                reason: format!(
                    "{} was sealed for v{} and the server says it committed v{}",
                    req.entry.path,
                    req.base_version + 1,
                    c.version
                ),
            });
        }
        let manifest = match &req.content {
            Some(lbsync_proto::Content::Known(id)) => Some(*id),
            Some(lbsync_proto::Content::Full(m)) => Some(m.id()),
            _ => req.entry.manifest,
        };
        Ok(Entry {
            version: c.version,
            seq: c.seq,
            committed_ns: c.committed_ns,
            manifest,
            ..req.entry.clone()
        })
    }

    /// Commits; a missing chunk or an unknown manifest comes back as an answer, not an error.
    /// In an encrypted folder a new path (base 0) over a tombstone is committed again on the
    /// tombstone's version: the server answers it as a conflict, which it is not.
    pub async fn commit(&mut self, mut req: CommitRequest) -> Result<Committed> {
        // The journal moves on from what the handshake said (see `take_head`).
        self.head_committed_ns = 0;
        for _ in 0..4 {
            let base = req.base_version;
            let answer = self
                .commit_once(&req, self.sealed_request(req.clone())?)
                .await?;
            match answer {
                Committed::Outcome(CommitOutcome::Conflict(cur))
                    if self.codec.is_sealed() && base == 0 && cur.deleted =>
                {
                    req.base_version = cur.version;
                }
                answer => return Ok(answer),
            }
        }
        Err(Error::Protocol {
            what: "Commit",
            reason: format!(
                "{} kept coming back as a deletion newer than the version committed on",
                req.entry.path
            ),
        })
    }

    /// Sends `sealed`, the server form of `plain`.
    async fn commit_once(
        &mut self,
        plain: &CommitRequest,
        sealed: CommitRequest,
    ) -> Result<Committed> {
        let mut req = pb::CommitRequest {
            brief_answer: true,
            ..sealed.into()
        };
        if self.raw() {
            req.entry = req.entry.map(pb::Entry::with_raw_path);
        }
        self.sent += req.encoded_len() as u64;
        match self.client.commit(req).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                self.received += resp.encoded_len() as u64;
                if let Some(pb::commit_response::Result::Brief(c)) = &resp.result {
                    let e = self.committed_entry(plain, c)?;
                    return Ok(Committed::Outcome(CommitOutcome::Committed(e)));
                }
                let outcome =
                    match CommitOutcome::try_from(resp).map_err(Error::protocol("Commit"))? {
                        CommitOutcome::Committed(e) => {
                            CommitOutcome::Committed(self.answered_entry("Commit", e)?)
                        }
                        CommitOutcome::Conflict(e) => {
                            CommitOutcome::Conflict(self.answered_entry("Commit", e)?)
                        }
                    };
                Ok(Committed::Outcome(outcome))
            }
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                let ids = s
                    .metadata()
                    .get_bin("lbsync-missing-ids-bin")
                    .and_then(|v| v.to_bytes().ok())
                    .and_then(|b| ids_from_bytes(&b).ok())
                    .unwrap_or_default();
                Ok(Committed::MissingChunks(ids))
            }
            Err(s) if s.code() == tonic::Code::NotFound && s.message().contains("manifest") => {
                Ok(Committed::UnknownManifest)
            }
            Err(s) => Err(Error::rpc("Commit")(s)),
        }
    }

    /// Commits several requests by `device`, each decided on its own; one outcome per request,
    /// in order.
    pub async fn commit_batch(
        &mut self,
        device: &str,
        reqs: Vec<CommitRequest>,
    ) -> Result<Vec<BatchOutcome>> {
        // The journal moves on from what the handshake said (see `take_head`).
        self.head_committed_ns = 0;
        let mut out = self.commit_batch_once(device, reqs.clone()).await?;
        if !self.codec.is_sealed() {
            return Ok(out);
        }
        // New paths over tombstones, committed again on the tombstones' versions (see
        // `commit`).
        for _ in 0..3 {
            let again: Vec<usize> = (0..out.len())
                .filter(|&i| {
                    reqs[i].base_version == 0
                        && matches!(&out[i], BatchOutcome::Conflict(cur) if cur.deleted)
                })
                .collect();
            if again.is_empty() {
                break;
            }
            let retry: Vec<CommitRequest> = again
                .iter()
                .map(|&i| {
                    let BatchOutcome::Conflict(cur) = &out[i] else {
                        unreachable!("filtered above")
                    };
                    CommitRequest {
                        base_version: cur.version,
                        ..reqs[i].clone()
                    }
                })
                .collect();
            let answers = self.commit_batch_once(device, retry).await?;
            for (i, a) in again.into_iter().zip(answers) {
                out[i] = a;
            }
        }
        Ok(out)
    }

    async fn commit_batch_once(
        &mut self,
        device: &str,
        reqs: Vec<CommitRequest>,
    ) -> Result<Vec<BatchOutcome>> {
        let reqs = reqs
            .into_iter()
            .map(|r| self.sealed_request(r))
            .collect::<Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(reqs.len());
        let mut reqs = reqs.into_iter().peekable();
        while reqs.peek().is_some() {
            let batch: Vec<CommitRequest> = reqs.by_ref().take(MAX_BATCH_COMMITS).collect();
            let n = batch.len();
            let mut req = batch_to_pb(&self.folder, device, batch);
            if self.raw() {
                for c in &mut req.commits {
                    c.entry = c.entry.take().map(pb::Entry::with_raw_path);
                }
            }
            self.sent += req.encoded_len() as u64;
            // A few commits are sent and answered as they are: zstd's frame would cost more
            // than it saves on a few entries.
            let mut client = if n >= PACKED_COMMITS {
                packed(&self.client, self.compress)
            } else {
                self.client.clone()
            };
            let resp = client
                .commit_batch(req)
                .await
                .map_err(Error::rpc("CommitBatch"))?
                .into_inner();
            self.received += resp.encoded_len() as u64;
            if resp.results.len() != n {
                return Err(Error::Protocol {
                    what: "CommitBatch",
                    reason: format!("{} results for {n} commits", resp.results.len()),
                });
            }
            for r in resp.results {
                let outcome =
                    match BatchOutcome::try_from(r).map_err(Error::protocol("CommitBatch"))? {
                        BatchOutcome::Conflict(cur) => {
                            BatchOutcome::Conflict(self.answered_entry("CommitBatch", cur)?)
                        }
                        o => o,
                    };
                out.push(outcome);
            }
        }
        Ok(out)
    }

    /// The Changes stream from `cursor`.
    pub async fn changes(&mut self, cursor: u64) -> Result<tonic::Streaming<pb::ChangesResponse>> {
        let req = pb::ChangesRequest {
            folder: self.folder.clone(),
            cursor,
            same_content_entries: self.same_content,
            raw_paths: self.raw(),
        };
        Ok(packed(&self.client, false)
            .changes(req)
            .await
            .map_err(Error::rpc("Changes"))?
            .into_inner())
    }

    /// Follows the folder's changes from `cursor` on a connection of its own, for as long as the
    /// stream is kept. A long-lived stream that is read only between syncs must not share the
    /// sync's HTTP/2 connection: its unread messages would hold the connection's flow-control
    /// window, and the sync's own answers (chunks, manifests) would wait behind them forever.
    pub async fn follow(&self, cursor: u64) -> Result<tonic::Streaming<pb::ChangesResponse>> {
        let channel = self.link.connect().await?;
        let req = pb::ChangesRequest {
            folder: self.folder.clone(),
            cursor,
            same_content_entries: self.same_content,
            raw_paths: self.raw(),
        };
        Ok(packed(&stub(channel, self.auth.clone()), false)
            .changes(req)
            .await
            .map_err(Error::rpc("Changes"))?
            .into_inner())
    }

    /// The journal head and its entry's commit time as the handshake gave them, once: `None`
    /// after the first call, once this client committed anything (a restore on this connection
    /// moved the journal on), or when the server did not say (older servers).
    pub fn take_head(&mut self) -> Option<(u64, i64)> {
        let ns = std::mem::take(&mut self.head_committed_ns);
        (ns != 0).then_some((self.head, ns))
    }

    /// The changes after `cursor` up to the head: (entries by path, new cursor).
    pub async fn changes_until_caught_up(
        &mut self,
        cursor: u64,
    ) -> Result<(HashMap<SyncPath, Entry>, u64)> {
        let mut stream = self.changes(cursor).await?;
        self.same_as.clear();
        let mut out = HashMap::new();
        let mut hold: Option<u64> = None;
        loop {
            let Some(msg) = stream.message().await.map_err(Error::rpc("Changes"))? else {
                return Err(Error::Protocol {
                    what: "Changes",
                    reason: "the stream ended before catching up".into(),
                });
            };
            self.received += msg.encoded_len() as u64;
            self.expired_seq = msg.expired_seq;
            for e in msg.entries {
                // One entry this client cannot take must not stop the others. A path it
                // refuses for good (such as one inside `.lbsync/`) must not hold the cursor
                // forever either; but an entry that does not open (not sealed with this
                // folder's key, or altered on the way) holds the cursor just before it, so the
                // next sync reads it again: from an honest server it opens, and nothing is
                // missed.
                let seq = e.seq;
                let same_as = e.same_content_base_ns;
                match Entry::try_from(e) {
                    Err(err) => {
                        let why = format!("the server sent an entry that is refused here: {err}");
                        warn!("{why}");
                        self.refused.push(why);
                    }
                    Ok(e) => match self.codec.open_entry(e) {
                        Ok(e) => {
                            if same_as != 0 && e.manifest.is_none() {
                                self.same_as.insert(e.path.clone(), same_as);
                            } else {
                                self.same_as.remove(&e.path);
                            }
                            out.insert(e.path.clone(), e);
                        }
                        Err(err) => {
                            let why = err.to_string();
                            warn!("{why}");
                            self.refused.push(why);
                            hold = Some(hold.map_or(seq, |h: u64| h.min(seq)));
                        }
                    },
                }
            }
            if msg.caught_up {
                let cursor = match hold {
                    Some(seq) => msg.cursor.min(seq.saturating_sub(1)),
                    None => msg.cursor,
                };
                return Ok((out, cursor));
            }
        }
    }

    /// A manifest, asked as a delta against `base` when the client has one.
    pub async fn manifest(&mut self, id: ManifestId, base: Option<&Manifest>) -> Result<Manifest> {
        let req = pb::GetManifestRequest {
            manifest_id: Bytes::copy_from_slice(id.as_bytes()),
            base_manifest_id: base
                .map(|b| Bytes::copy_from_slice(b.id().as_bytes()))
                .unwrap_or_default(),
            folder: self.folder.clone(),
        };
        self.sent += req.encoded_len() as u64;
        let resp = self
            .client
            .get_manifest(req)
            .await
            .map_err(Error::rpc("GetManifest"))?
            .into_inner();
        self.received += resp.encoded_len() as u64;
        match resp.content {
            Some(content) => self.manifest_from(content, id, base, "GetManifest"),
            None => Err(Error::Protocol {
                what: "GetManifest",
                reason: "no content".into(),
            }),
        }
    }

    /// Many manifests in one call (each with an optional base, as [`Self::manifest`]). `None`
    /// for one the server did not put in its answer (not there, or past the answer's budget):
    /// ask for it alone. Errors with [`tonic::Code::Unimplemented`] from older servers.
    pub async fn manifests(
        &mut self,
        wanted: &[(ManifestId, Option<&Manifest>)],
    ) -> Result<Vec<Option<Manifest>>> {
        let req = pb::GetManifestsRequest {
            manifest_ids: wanted
                .iter()
                .map(|(id, _)| Bytes::copy_from_slice(id.as_bytes()))
                .collect(),
            base_manifest_ids: if wanted.iter().all(|(_, b)| b.is_none()) {
                Vec::new()
            } else {
                wanted
                    .iter()
                    .map(|(_, b)| {
                        b.map(|b| Bytes::copy_from_slice(b.id().as_bytes()))
                            .unwrap_or_default()
                    })
                    .collect()
            },
            folder: self.folder.clone(),
        };
        self.sent += req.encoded_len() as u64;
        let resp = self
            .client
            .get_manifests(req)
            .await
            .map_err(Error::rpc("GetManifests"))?
            .into_inner();
        self.received += resp.encoded_len() as u64;
        if resp.manifests.len() != wanted.len() {
            return Err(Error::Protocol {
                what: "GetManifests",
                reason: format!(
                    "{} answers for {} manifests",
                    resp.manifests.len(),
                    wanted.len()
                ),
            });
        }
        resp.manifests
            .into_iter()
            .zip(wanted)
            .map(|(answer, (id, base))| match answer.content {
                Some(content) => self
                    .manifest_from(content, *id, *base, "GetManifests")
                    .map(Some),
                None => Ok(None),
            })
            .collect()
    }

    /// The manifest `id` from an answer: decoded, or a delta applied to `base`, and checked
    /// against its id.
    fn manifest_from(
        &self,
        content: pb::get_manifest_response::Content,
        id: ManifestId,
        base: Option<&Manifest>,
        what: &'static str,
    ) -> Result<Manifest> {
        let bad = |reason: String| Error::Protocol { what, reason };
        let m = match content {
            pb::get_manifest_response::Content::Manifest(b) => self.codec.decode_manifest(&b)?,
            pb::get_manifest_response::Content::Delta(d) => {
                let (b, delta) = delta_from_pb(&d).map_err(|e| bad(e.to_string()))?;
                let base = base
                    .filter(|m| m.id() == b)
                    .ok_or_else(|| bad("a delta against a manifest we did not name".into()))?;
                delta.apply(base)?
            }
        };
        if m.id() != id {
            return Err(bad(format!("asked for manifest {id}, got {}", m.id())));
        }
        Ok(m)
    }

    /// The most ids the server takes in one request.
    pub fn max_ids(&self) -> usize {
        self.max_ids
    }

    /// Chunks by id, each checked against its id. `bases` offers, per chunk, chunks this side
    /// holds (ids and their concatenated bytes) that the server may send it as a delta against.
    pub async fn chunks(
        &mut self,
        ids: &[ChunkId],
        bases: &DeltaBases,
        max_len: u32,
    ) -> Result<HashMap<ChunkId, Bytes>> {
        let mut out = HashMap::with_capacity(ids.len());
        let wire_max = self.codec.wire_max_len(max_len);
        for batch in ids.chunks(self.max_ids) {
            let offered = if bases.is_empty() {
                Vec::new()
            } else {
                batch
                    .iter()
                    .map(|id| {
                        bases
                            .get(id)
                            .map(|(b, _)| ids_to_bytes(b))
                            .unwrap_or_default()
                    })
                    .collect()
            };
            let req = pb::GetChunksRequest {
                ids: ids_to_bytes(batch),
                bases: offered,
                folder: self.folder.clone(),
                // Sealed chunks do not compress, together or alone.
                together: !self.codec.is_sealed(),
            };
            self.sent += req.encoded_len() as u64;
            let mut stream = self
                .client
                .get_chunks(req)
                .await
                .map_err(Error::rpc("GetChunks"))?
                .into_inner();
            // The answer is in request order: a chunk that came in a together frame, without
            // an id, is the one asked for at its place, and is checked against it.
            let mut asked = batch.iter();
            while let Some(mut msg) = stream.message().await.map_err(Error::rpc("GetChunks"))? {
                self.received += msg.encoded_len() as u64;
                unpack_answer_together(&mut msg, TOGETHER_LIMIT)
                    .map_err(Error::protocol("GetChunks"))?;
                for mut c in msg.chunks {
                    let place = asked.next();
                    if c.id.is_empty() {
                        let id = place.ok_or_else(|| Error::Protocol {
                            what: "GetChunks",
                            reason: "the server sent more chunks than were asked for".into(),
                        })?;
                        c.id = Bytes::copy_from_slice(id.as_bytes());
                    }
                    let chunk = receive_chunk(c, bases, wire_max)?;
                    let id = chunk.id();
                    out.insert(id, self.codec.open_chunk(id, chunk.into_data(), max_len)?);
                }
            }
        }
        Ok(out)
    }

    /// A path's retained versions, newest first. In an encrypted folder each is opened on its
    /// own: one that does not open is left out, and said so (see [`Remote::history_checked`]).
    pub async fn history(&mut self, path: &SyncPath) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for v in self.history_checked(path).await? {
            match v {
                Ok(e) => out.push(e),
                Err(why) => {
                    warn!("{why}");
                    self.refused.push(why);
                }
            }
        }
        Ok(out)
    }

    /// Whether sealed paths go raw (`Entry.raw_path`): an encrypted folder on a server that
    /// takes them.
    fn raw(&self) -> bool {
        self.raw_paths && self.codec.is_sealed()
    }

    /// A History request for the sealed (or plain) path `asked`, raw when it may be.
    fn history_request(&self, asked: &SyncPath, version: u64) -> pb::HistoryRequest {
        let text = asked.as_str();
        let raw = self
            .raw()
            .then(|| lbsync_proto::raw_path::to_raw(text))
            .flatten();
        pb::HistoryRequest {
            folder: self.folder.clone(),
            path: if raw.is_some() {
                Bytes::new()
            } else {
                Bytes::from(text.to_owned())
            },
            version,
            raw_path: raw.map(Bytes::from).unwrap_or_default(),
        }
    }

    /// One retained version of a path, in the clear (`None`: not among the newest the server
    /// lists, or it does not open, which is said as for [`Remote::history`]). Asked as that
    /// version alone, whose entry comes without the path asked for (`HistoryRequest.version`);
    /// an older server sends every version, and the one asked for is taken.
    pub async fn history_version(
        &mut self,
        path: &SyncPath,
        version: u64,
    ) -> Result<Option<Entry>> {
        let asked = self.codec.seal_path(path)?;
        let resp = self
            .client
            .history(self.history_request(&asked, version))
            .await
            .map_err(Error::rpc("History"))?
            .into_inner();
        let Some(mut e) = resp.versions.into_iter().find(|e| e.version == version) else {
            return Ok(None);
        };
        // The entry is opened as the path asked for: in an encrypted folder another path's
        // entry does not open as it.
        if e.path.is_empty() && e.raw_path.is_empty() {
            e.path = Bytes::from(asked.as_str().to_owned());
        }
        match self.open_entry(e) {
            Ok(e) if e.path == *path => Ok(Some(e)),
            Ok(e) => {
                let why = format!(
                    "the server sent {}'s entry as a version of {path}: not taken",
                    e.path
                );
                warn!("{why}");
                self.refused.push(why);
                Ok(None)
            }
            Err(why) => {
                warn!("{why}");
                self.refused.push(why);
                Ok(None)
            }
        }
    }

    /// A path's retained versions, newest first, each in the clear or why it is not.
    pub async fn history_checked(
        &mut self,
        path: &SyncPath,
    ) -> Result<Vec<std::result::Result<Entry, String>>> {
        let asked = self.codec.seal_path(path)?;
        let resp = self
            .client
            .history(self.history_request(&asked, 0))
            .await
            .map_err(Error::rpc("History"))?
            .into_inner();
        Ok(resp
            .versions
            .into_iter()
            .map(|e| {
                let e = self.open_entry(e)?;
                if e.path != *path {
                    return Err(format!(
                        "the server sent {}'s entry as a version of {path}: not taken",
                        e.path
                    ));
                }
                Ok(e)
            })
            .collect())
    }

    /// Makes an old version current again. In an encrypted folder the server cannot (it does
    /// not know the metadata): the old version's manifest is committed again, with its metadata
    /// sealed anew, on the current version.
    pub async fn restore(
        &mut self,
        path: &SyncPath,
        version: u64,
        device: &str,
    ) -> Result<CommitOutcome> {
        // The journal moves on from what the handshake said (see `take_head`).
        self.head_committed_ns = 0;
        if self.codec.is_sealed() {
            return self.restore_sealed(path, version, device).await;
        }
        let resp = self
            .client
            .restore(pb::RestoreRequest {
                folder: self.folder.clone(),
                path: Bytes::from(path.as_str().to_owned()),
                version,
                device: device.to_owned(),
            })
            .await
            .map_err(Error::rpc("Restore"))?
            .into_inner();
        CommitOutcome::try_from(resp).map_err(Error::protocol("Restore"))
    }

    async fn restore_sealed(
        &mut self,
        path: &SyncPath,
        version: u64,
        device: &str,
    ) -> Result<CommitOutcome> {
        let versions = self.history_checked(path).await?;
        let current = versions
            .iter()
            .filter_map(|v| v.as_ref().ok())
            .map(|e| e.version)
            .max()
            .unwrap_or(0);
        let refused = |reason: String| Error::Refused {
            what: format!("restore {path} v{version}"),
            reason,
        };
        // A version that does not open is never restored: it is not known to be this folder's.
        let old = versions
            .into_iter()
            .filter_map(std::result::Result::ok)
            .find(|e| e.version == version)
            .ok_or_else(|| {
                refused(
                    "the server keeps no such version sealed by this folder's key (see `history`)"
                        .into(),
                )
            })?;
        if old.deleted {
            return Err(refused("that version is a deletion".into()));
        }
        let entry = Entry {
            seq: 0,
            committed_ns: 0,
            version: 0,
            device: device.to_owned(),
            sealed: Vec::new(),
            ..old
        };
        let content = entry.manifest.map(lbsync_proto::Content::Known);
        let req = CommitRequest {
            folder: self.folder.clone(),
            entry,
            base_version: current,
            content,
        };
        match self.commit(req).await? {
            Committed::Outcome(o) => Ok(o),
            Committed::MissingChunks(_) | Committed::UnknownManifest => Err(refused(
                "the server no longer holds that version's content".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_list_is_split_on_commas_and_an_empty_name_is_refused() {
        assert_eq!(
            server_urls("http://a:1, http://b:2").unwrap(),
            ["http://a:1", "http://b:2"]
        );
        assert_eq!(server_urls("http://a:1").unwrap(), ["http://a:1"]);
        assert!(matches!(server_urls("http://a:1,"), Err(Error::BadUrl(_))));
        assert!(matches!(server_urls(""), Err(Error::BadUrl(_))));
    }

    #[test]
    fn the_server_that_worked_last_is_tried_first() {
        let list = ["http://a:1", "http://b:2", "http://c:3"];
        assert_eq!(try_order(&list, None), list);
        assert_eq!(
            try_order(&list, Some("http://b:2")),
            ["http://b:2", "http://a:1", "http://c:3"]
        );
        // A remembered server no longer in the list changes nothing.
        assert_eq!(try_order(&list, Some("http://d:4")), list);
        let urls = "http://a:1,http://b:2,http://c:3 (test)";
        assert_eq!(last_good(urls), None);
        remember_good(urls, "http://c:3");
        remember_good(urls, "http://b:2");
        assert_eq!(last_good(urls).as_deref(), Some("http://b:2"));
    }

    #[tokio::test]
    async fn an_unreachable_server_is_passed_over_for_the_next() {
        // Two ports that nothing listens on: the first fails over, the last error is returned.
        let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (a, b) = (free(), free());
        let urls = format!(
            "http://{},http://{}",
            a.local_addr().unwrap(),
            b.local_addr().unwrap()
        );
        drop((a, b));
        let err = Remote::connect(&urls, None, "f", "dev")
            .await
            .err()
            .unwrap();
        let Error::Connect { url, .. } = err else {
            panic!("expected a connect error, got {err}");
        };
        assert!(urls.ends_with(&url), "{url} is the last of {urls}");
    }
}
