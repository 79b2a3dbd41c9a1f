//! Chunk transfer: PutChunks receives, verifies and stores chunks; GetChunks streams them back,
//! as deltas against chunks the client holds when that is smaller. An encrypted folder's chunks
//! are sealed (up to [`max_sealed_chunk`] long, and incompressible): they are stored as they
//! arrive and served as stored (no zstd attempt), or as a delta against sealed chunks the client
//! offers: sealed block by block, an edited chunk shares most of its bytes with the one it
//! replaced.

use bytes::Bytes;
use lbsync_chunkstore::{Chunk, ChunkStore, Inserted, Signature};
use lbsync_proto::convert::max_sealed_chunk;
use lbsync_proto::wire::{
    MAX_DELTA_BASES, chunk_bases, decode_block_delta, decode_chunk_against, encode_chunk,
    encode_chunk_against, pack_answer_together, raw_chunk, signature_to_pb, unpack_together,
};
use lbsync_proto::{ids_from_bytes, pb};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use crate::authz::{Need, Who};
use crate::error::{Error, Result, status};
use crate::meta::Scopes;

use super::*;

/// Chunks received are stored in batches of about this size: one fsync each. Received chunks
/// share their messages' buffers, so a batch holds several times its size in memory: at 8 MiB
/// the server's peak RSS in a 1 GiB push was ~165 MB, at 4 MiB ~125 MB, at the same speed.
const PUT_BATCH_BYTES: usize = 4 << 20;
/// The most chunk bytes (after decompression) one PutChunks message may declare: bounds the
/// memory one message can make the server allocate.
const PUT_MESSAGE_RAW_LIMIT: u64 = 64 << 20;
/// The most bytes of offered delta bases one GetChunks request makes the server read.
const GET_BASE_BUDGET: u64 = 64 << 20;
/// The most signature bytes one GetSignatures answer holds (about 40 times as many chunk bytes
/// read).
const SIGNATURE_ANSWER_BYTES: usize = 4 << 20;
/// GetChunks answers in messages of about this size.
const GET_MESSAGE_BYTES: usize = 1 << 20;
/// ... and in messages of about this many chunk bytes when they go in a together frame: the
/// frame's window spans the message, and a larger one finds more that files share.
const GET_TOGETHER_BYTES: usize = 4 << 20;
/// The most bytes of chunks GetChunks reads at once (counted at the largest chunk size).
const GET_READ_BYTES: usize = 4 << 20;

impl SyncService {
    pub(super) async fn put_chunks_rpc(
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
        let folders = self.folders.clone();
        let f = folder.clone();
        let encrypted = to_status(blocking(move || folders.encrypted(&f)).await)?;
        let largest = self.store.params().largest_chunk();
        let max_len = if encrypted {
            max_sealed_chunk(largest)
        } else {
            largest
        };
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
                // Counted as the client counts what it sends: encoded messages.
                received += prost::Message::encoded_len(&m);
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
                // A turn per message: none is held while the client is waited for.
                let turn = self.gates.enter(&caller.name()).await;
                let verified = blocking(move || {
                    let _turn = turn;
                    let mut m = m;
                    let mut base_budget = PUT_MESSAGE_RAW_LIMIT;
                    let scope = scoped.as_deref().map(|f| (&scopes, f));
                    let together = unpack_together(&mut m, PUT_MESSAGE_RAW_LIMIT)?;
                    m.chunks
                        .into_iter()
                        .zip(together)
                        .map(|(c, together)| {
                            let c = receive_chunk(&*store, scope, c, max_len, &mut base_budget)?;
                            // Compressed with its neighbours: stored compressed on its own.
                            Ok(if together {
                                c.compress_when_stored()
                            } else {
                                c
                            })
                        })
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
                    insert_in_scope(&*store, &scopes, &folder, scoped, &batch)
                }));
            }
            if stop {
                break;
            }
        }
        if let Some(h) = in_flight.take() {
            count(&mut answer, h.await)?;
        }
        self.metrics
            .chunks(u64::from(answer.stored), u64::from(answer.already_present));
        if let Some(s) = failure {
            return Err(s);
        }
        info!(
            "received {} for {folder:?} from {} ({received} bytes on the wire): {} new, {} \
             already stored",
            lbsync_cli::units::count(u64::from(answer.stored + answer.already_present), "chunk"),
            caller.name(),
            answer.stored,
            answer.already_present
        );
        Ok(Response::new(answer))
    }

    pub(super) async fn get_signatures_rpc(
        &self,
        req: Request<pb::GetSignaturesRequest>,
    ) -> Result<Response<pb::GetSignaturesResponse>, Status> {
        let who = Who::of(&req);
        let r = req.into_inner();
        let caller = self
            .authz
            .authorize(who, "GetSignatures", &r.folder, Need::Read)
            .await?;
        let _turn = self.gates.enter(&caller.name()).await;
        let ids = to_status(check_ids(&r.ids, &self.limits))?;
        let scoped = caller.scope(&r.folder).map(str::to_owned);
        let (store, scopes, folders) = (
            self.store.clone(),
            self.scopes.clone(),
            self.folders.clone(),
        );
        let folder = r.folder.clone();
        let signatures = to_status(
            blocking(move || {
                if folders.encrypted(&folder)? {
                    return Err(Error::Precondition(format!(
                        "folder {folder} is encrypted: its chunks go as deltas of their sealed \
                         blocks, not against signatures"
                    )));
                }
                let scope = scoped.as_deref().map(|f| (&scopes, f));
                let mut out = Vec::with_capacity(ids.len());
                let mut size = 0usize;
                // A group at a time, as GetChunks reads: one scope query and one batched read.
                let group =
                    (GET_READ_BYTES / store.params().largest_chunk().max(1) as usize).max(1);
                for ids in ids.chunks(group) {
                    for bytes in read_in_scope(&*store, scope, ids)? {
                        let sig = match bytes {
                            Some(b) => signature_to_pb(&Signature::of(&b)),
                            None => pb::ChunkSignature::default(),
                        };
                        size += sig.weak.len() + sig.strong.len() + 8;
                        if size > SIGNATURE_ANSWER_BYTES {
                            return Err(Error::BadRequest(format!(
                                "the signatures of these {} chunks come to over \
                                 {SIGNATURE_ANSWER_BYTES} bytes: ask for fewer chunks at once",
                                ids.len()
                            )));
                        }
                        out.push(sig);
                    }
                }
                Ok(out)
            })
            .await,
        )?;
        Ok(Response::new(pb::GetSignaturesResponse { signatures }))
    }

    pub(super) async fn get_chunks_rpc(
        &self,
        req: Request<pb::GetChunksRequest>,
    ) -> Result<Response<BoxStream<pb::GetChunksResponse>>, Status> {
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
        let folders = self.folders.clone();
        let f = r.folder.clone();
        let encrypted = to_status(blocking(move || folders.encrypted(&f)).await)?;
        // Sealed chunks do not compress: they go one by one, as they are.
        let together = r.together && !encrypted;
        let (tx, rx) = mpsc::channel(4);
        let (store, scopes) = (self.store.clone(), self.scopes.clone());
        let (gates, who) = (self.gates.clone(), caller.name());
        // Reading and compressing is blocking work: one blocking task feeds the stream, a turn
        // of the caller's per message, not held while the client is slow to read.
        tokio::task::spawn_blocking(move || {
            let mut turn = Some(gates.enter_blocking(&who));
            let scope = scoped.as_deref().map(|f| (&scopes, f));
            let mut msg = pb::GetChunksResponse::default();
            let mut size = 0usize;
            // Offered bases are read up to this many bytes a request; past it, chunks go plain.
            let mut base_budget = GET_BASE_BUDGET;
            // Read a group at a time: one scope query, and on an object store one index lookup
            // and a few ranged GETs. A group is sized to hold about GET_READ_BYTES of chunks of
            // the largest size seen so far (at first the small-file class's largest), so the
            // first group of a request for large-file chunks may hold up to 16 times that.
            let mut largest = store.params().max_size.max(1) as usize;
            let mut rest: &[lbsync_chunkstore::ChunkId] = &ids;
            let mut done = 0;
            while !rest.is_empty() {
                let n = (GET_READ_BYTES / largest).clamp(1, rest.len());
                let (ids, later) = rest.split_at(n);
                rest = later;
                let (g, read) = (done, read_in_scope(&*store, scope, ids));
                done += n;
                let chunks = match read {
                    Ok(chunks) => chunks,
                    Err(e) => {
                        drop(turn.take());
                        let _ = tx.blocking_send(Err(status(&e)));
                        return;
                    }
                };
                for (j, (id, bytes)) in ids.iter().zip(chunks).enumerate() {
                    let i = g + j;
                    // Read checked against its id. Outside the caller's folder a chunk is as
                    // absent as one never stored.
                    let Some(bytes) = bytes else {
                        drop(turn.take());
                        let e = Error::NotFound(format!("chunk {id} is not on the server"));
                        let _ = tx.blocking_send(Err(status(&e)));
                        return;
                    };
                    largest = largest.max(bytes.len());
                    let wire = match bases.get(i).filter(|b| !b.is_empty()) {
                        Some(b) => encode_against_stored(
                            &*store,
                            scope,
                            (*id, &bytes, encrypted),
                            b,
                            &mut base_budget,
                        ),
                        // Compressed with the message's other whole chunks when it is sent.
                        None if together => raw_chunk(*id, &bytes),
                        None => whole(*id, &bytes, encrypted),
                    };
                    size += wire.data.len();
                    msg.chunks.push(wire);
                    if size
                        >= if together {
                            GET_TOGETHER_BYTES
                        } else {
                            GET_MESSAGE_BYTES
                        }
                    {
                        let full = finish_answer(std::mem::take(&mut msg), together);
                        drop(turn.take());
                        if tx.blocking_send(Ok(full)).is_err() {
                            return;
                        }
                        size = 0;
                        turn = Some(gates.enter_blocking(&who));
                    }
                }
            }
            if !msg.chunks.is_empty() {
                let last = finish_answer(msg, together);
                drop(turn);
                let _ = tx.blocking_send(Ok(last));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A chunk off the wire, checked against its id; a delta is rebuilt on the stored chunks it names.
/// The bases of one message may total at most `base_budget` bytes (it is decremented): a few
/// bytes of deltas must not make the server read gigabytes.
fn receive_chunk(
    store: &dyn ChunkStore,
    scope: Option<(&Scopes, &str)>,
    c: pb::ChunkData,
    max_len: u32,
    base_budget: &mut u64,
) -> Result<Chunk> {
    let bases = chunk_bases(&c)?;
    if bases.is_empty() {
        return Ok(decode_chunk_against(c, max_len, None)?);
    }
    let block_delta = c.compression == i32::from(pb::Compression::BlockDelta);
    let mut base = Vec::new();
    let mut parts: Vec<Bytes> = Vec::new();
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
        if block_delta {
            parts.push(bytes);
        } else {
            base.extend_from_slice(&bytes);
        }
    }
    if block_delta {
        let parts: Vec<&[u8]> = parts.iter().map(|b| &b[..]).collect();
        return Ok(decode_block_delta(c, max_len, &parts)?);
    }
    Ok(decode_chunk_against(c, max_len, Some(&base))?)
}

/// A chunk for a client that holds `bases`: a delta against them when the store has them all,
/// they fit in what is left of `budget` (decremented) and the delta is smaller; else whole. The
/// chunk is `(id, bytes, sealed)`: in an encrypted folder the delta is made of sealed bytes
/// against sealed bytes, which share the blocks the edit left alone.
fn encode_against_stored(
    store: &dyn ChunkStore,
    scope: Option<(&Scopes, &str)>,
    (id, bytes, sealed): (lbsync_chunkstore::ChunkId, &Bytes, bool),
    bases: &[lbsync_chunkstore::ChunkId],
    budget: &mut u64,
) -> pb::ChunkData {
    let mut base = Vec::new();
    for b in bases {
        // A delta against a base outside the caller's folder would tell that the store has it.
        if !in_scope(scope, b).unwrap_or(false) {
            return whole(id, bytes, sealed);
        }
        match store.get(b) {
            Ok(Some(bb)) if bb.len() as u64 <= *budget => {
                *budget -= bb.len() as u64;
                base.extend_from_slice(&bb);
            }
            _ => return whole(id, bytes, sealed),
        }
    }
    let delta = encode_chunk_against(id, bytes, bases, &base);
    if sealed && delta.base_ids.is_empty() {
        return whole(id, bytes, sealed);
    }
    delta
}

/// A GetChunks message ready to send: for a client that asked `together`, its whole chunks
/// (there as they are) compressed into one frame, or each compressed alone when the frame
/// would not save 1/32 of them.
fn finish_answer(mut msg: pb::GetChunksResponse, together: bool) -> pb::GetChunksResponse {
    if !together || pack_answer_together(&mut msg).unwrap_or(false) {
        return msg;
    }
    for c in &mut msg.chunks {
        if let (true, Some(id)) = (
            lbsync_proto::wire::goes_together(c),
            lbsync_chunkstore::ChunkId::from_slice(&c.id),
        ) {
            *c = whole(id, &c.data, false);
        }
    }
    msg
}

/// A chunk sent whole: compressed when that pays, except a sealed chunk (an encrypted folder's),
/// whose bytes do not compress and go as stored.
fn whole(id: lbsync_chunkstore::ChunkId, bytes: &Bytes, sealed: bool) -> pb::ChunkData {
    if !sealed {
        return encode_chunk(id, bytes);
    }
    pb::ChunkData {
        id: Bytes::copy_from_slice(id.as_bytes()),
        compression: pb::Compression::None.into(),
        raw_len: bytes.len() as u32,
        data: bytes.clone(),
        base_ids: Bytes::new(),
    }
}

/// The chunks of `ids`, in order, each checked against its id; `None` for one the store lacks
/// or (with a scope) the caller's folder does not hold. One scope query and one batched read.
fn read_in_scope(
    store: &dyn ChunkStore,
    scope: Option<(&Scopes, &str)>,
    ids: &[lbsync_chunkstore::ChunkId],
) -> Result<Vec<Option<bytes::Bytes>>> {
    let outside: std::collections::HashSet<lbsync_chunkstore::ChunkId> = match scope {
        Some((scopes, folder)) => scopes.outside(folder, ids)?.into_iter().collect(),
        None => Default::default(),
    };
    let inside: Vec<_> = ids
        .iter()
        .copied()
        .filter(|id| !outside.contains(id))
        .collect();
    let mut read = store.get_batch(&inside)?.into_iter();
    Ok(ids
        .iter()
        .map(|id| {
            if outside.contains(id) {
                None
            } else {
                read.next().flatten()
            }
        })
        .collect())
}

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
    store: &dyn ChunkStore,
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
