//! [`ObjectChunkStore`]: the [`ChunkStore`] on an object store and a [`ChunkIndex`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use lbsync_chunkstore::pack::Record;
use lbsync_chunkstore::{
    Chunk, ChunkId, ChunkParams, ChunkStore, GcOptions, GcReport, Inserted, ManifestId, StoreStats,
};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions};

use crate::bridge::Bridge;
use crate::cache::ChunkCache;
use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::index::{ChunkIndex, Location, PackName};
use crate::pack::{
    PackBuilder, build_packs, config_path, pack_name_of, pack_path, packs_dir, records_of,
};

/// How an [`ObjectChunkStore`] writes and reads.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// A pack object is closed at this size and the rest of a batch goes into the next one; every
    /// pack is one plain PUT (S3 takes up to 5 GiB in one).
    pub pack_target: u64,
    /// Bytes of recently read chunks kept in memory; 0 turns the cache off.
    pub cache_bytes: u64,
    /// Records of one pack at most this far apart are fetched with one ranged GET.
    pub coalesce_gap: u64,
    /// The longest span one coalesced GET fetches. Longer runs are cut into several GETs that
    /// go concurrently: against s3s-fs on loopback, 64 KiB chunks read in batches of 64 at
    /// 31 MiB/s with 16 MiB spans (one GET a batch), 60 MiB/s with 1 MiB, 24 MiB/s with 256 KiB.
    pub max_span: u64,
    /// Requests to the object store in flight at once, per call.
    pub concurrency: usize,
    /// For a store this open creates: the shortest grace period its collections may use,
    /// recorded in its config (an existing store keeps the one it was made with). The servers
    /// refresh the index time of a chunk a commit references once it is older than half of it.
    pub min_grace: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            pack_target: 64 << 20,
            cache_bytes: 256 << 20,
            coalesce_gap: 256 << 10,
            max_span: 1 << 20,
            concurrency: 8,
            min_grace: crate::config::DEFAULT_MIN_GRACE,
        }
    }
}

/// Chunks in immutable pack objects on an object store, found through a [`ChunkIndex`]. Clones
/// share everything. See the crate docs for the layout and the rules.
#[derive(Clone)]
pub struct ObjectChunkStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) objects: Arc<dyn ObjectStore>,
    pub(crate) prefix: Path,
    /// The store's URL for messages, e.g. `s3://bucket/prefix`.
    pub(crate) shown: String,
    pub(crate) index: Arc<dyn ChunkIndex>,
    pub(crate) config: StoreConfig,
    pub(crate) cache: ChunkCache,
    pub(crate) bridge: Bridge,
    pub(crate) opts: StoreOptions,
}

impl std::fmt::Debug for ObjectChunkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectChunkStore")
            .field("url", &self.inner.shown)
            .field("store_id", &self.inner.config.store_id)
            .finish()
    }
}

/// Milliseconds since the Unix epoch by this machine's clock.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl ObjectChunkStore {
    /// Creates a new store under `prefix`: writes its config object with `params` and a new
    /// random store id. Refuses ([`Error::AlreadyExists`]) if a config object is there already.
    pub fn create(
        objects: Arc<dyn ObjectStore>,
        prefix: Path,
        index: Arc<dyn ChunkIndex>,
        params: ChunkParams,
        opts: StoreOptions,
    ) -> Result<Self> {
        let shown = format!("{objects}/{prefix}");
        Self::start(objects, prefix, shown, index, Some(params), false, opts)
    }

    /// Opens the store under `prefix`; [`Error::NoStore`] if there is none.
    pub fn open(
        objects: Arc<dyn ObjectStore>,
        prefix: Path,
        index: Arc<dyn ChunkIndex>,
        opts: StoreOptions,
    ) -> Result<Self> {
        let shown = format!("{objects}/{prefix}");
        Self::start(objects, prefix, shown, index, None, true, opts)
    }

    /// Opens the store at a URL ([`crate::object_store_from_url`]); with `create` set, creates
    /// one with those params if the prefix holds none.
    pub fn open_url(
        url: &str,
        index: Arc<dyn ChunkIndex>,
        create: Option<ChunkParams>,
        opts: StoreOptions,
    ) -> Result<Self> {
        let (objects, prefix, shown) = crate::url::open_url(url)?;
        Self::start(objects, prefix, shown, index, create, true, opts)
    }

    fn start(
        objects: Arc<dyn ObjectStore>,
        prefix: Path,
        shown: String,
        index: Arc<dyn ChunkIndex>,
        create: Option<ChunkParams>,
        open: bool,
        opts: StoreOptions,
    ) -> Result<Self> {
        let bridge = Bridge::new()?;
        let path = config_path(&prefix);
        let url = format!("{shown}/config");
        let existing = {
            let (objects, path, url) = (objects.clone(), path.clone(), url.clone());
            bridge.run(async move { read_config(&*objects, &path, &url).await })?
        };
        let config = match (existing, create) {
            (Some(c), _) if open => c,
            (Some(_), _) => return Err(Error::AlreadyExists { url: shown }),
            (None, None) => return Err(Error::NoStore { url: shown }),
            (None, Some(params)) => {
                let config = StoreConfig::new(params, opts.min_grace)?;
                let (objects, bytes, shown2) = (objects.clone(), config.encode(), shown.clone());
                let written = bridge.run(async move {
                    let put = PutOptions {
                        mode: PutMode::Create,
                        ..PutOptions::default()
                    };
                    let payload = object_store::PutPayload::from(bytes);
                    let put = match objects.put_opts(&path, payload.clone(), put).await {
                        // Conditional PUT turned off (AWS_CONDITIONAL_PUT=disabled): the
                        // read-back below still tells a lost race.
                        Err(object_store::Error::NotImplemented { .. }) => {
                            objects.put(&path, payload).await
                        }
                        other => other,
                    };
                    match put {
                        // Another creator was first: its config is read back below.
                        Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
                        Err(e) => return Err(Error::object("write the store's config", url, e)),
                    }
                    // Some S3 servers (Garage) ignore If-None-Match and overwrite: whoever reads
                    // back a config that is not theirs lost a race of two creators.
                    read_config(&*objects, &path, &url).await
                })?;
                match written {
                    Some(c) if c == config => config,
                    Some(c) if open => c,
                    _ => return Err(Error::AlreadyExists { url: shown2 }),
                }
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                objects,
                prefix,
                shown,
                index,
                cache: ChunkCache::new(opts.cache_bytes),
                config,
                bridge,
                opts,
            }),
        })
    }

    /// The shortest grace period a collection of this store may use (from its config).
    pub fn min_grace(&self) -> Duration {
        self.inner.config.min_grace
    }

    /// The ids of `ids` the index lacks, each once in first-seen order; with `keep`, the others
    /// are touched first.
    fn missing_inner(&self, ids: &[ChunkId], keep: bool) -> Result<Vec<ChunkId>> {
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        let unique: Vec<ChunkId> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
        if keep {
            self.keep(&unique)?;
        }
        let found = self.inner.index.lookup(&unique)?;
        Ok(unique
            .into_iter()
            .zip(found)
            .filter_map(|(id, l)| l.is_none().then_some(id))
            .collect())
    }

    /// Keeps `ids` from a collection running now: touches the entries older than half the
    /// minimum grace period (see [`crate::gc`] for why that suffices).
    fn keep(&self, ids: &[ChunkId]) -> Result<()> {
        let now = now_ms();
        let half = i64::try_from(self.inner.config.min_grace.as_millis() / 2).unwrap_or(i64::MAX);
        self.inner.index.touch(ids, now, now.saturating_sub(half))
    }

    /// The store's identity: 32 lowercase hex digits made when it was created, kept in its config
    /// object. Another store at the same address has another id.
    pub fn store_id(&self) -> &str {
        &self.inner.config.store_id
    }

    /// The store's URL, as shown in messages.
    pub fn url(&self) -> &str {
        &self.inner.shown
    }

    /// The chunk index.
    pub fn index(&self) -> &Arc<dyn ChunkIndex> {
        &self.inner.index
    }

    pub(crate) fn pack_url(&self, pack: &PackName) -> String {
        format!(
            "{}/packs/{}/{pack}.pack",
            self.inner.shown,
            &pack.to_string()[..2]
        )
    }

    /// Every pack object, with its size and time of writing.
    pub(crate) fn list_packs(&self) -> Result<Vec<(PackName, ObjectMeta)>> {
        let inner = &self.inner;
        let (objects, dir) = (inner.objects.clone(), packs_dir(&inner.prefix));
        let url = format!("{}/packs/", inner.shown);
        let metas = inner.bridge.run(async move {
            objects
                .list(Some(&dir))
                .try_collect::<Vec<ObjectMeta>>()
                .await
                .map_err(|e| Error::object("list the pack objects", url, e))
        })?;
        Ok(metas
            .into_iter()
            .filter_map(|m| Some((pack_name_of(&m.location)?, m)))
            .collect())
    }

    /// Stores packs (concurrently) and then records the entries of those whose PUT succeeded:
    /// an entry is never recorded before its pack is stored. Returns the first failure, after
    /// recording what did succeed.
    pub(crate) fn put_packs(&self, packs: Vec<PackBuilder>, inserted_ms: i64) -> Result<()> {
        let results = self.put_objects(&packs)?;
        let mut first_err = None;
        let mut entries = Vec::new();
        for (pack, res) in packs.into_iter().zip(results) {
            match res {
                Ok(()) => entries.extend(pack.entries),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if !entries.is_empty() {
            self.inner.index.record(&entries, inserted_ms)?;
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Stores packs without recording their entries (a repack relocates them instead).
    pub(crate) fn put_packs_unrecorded(&self, packs: &[PackBuilder]) -> Result<()> {
        self.put_objects(packs)?.into_iter().collect()
    }

    /// PUTs pack objects concurrently; one result per pack, in order.
    fn put_objects(&self, packs: &[PackBuilder]) -> Result<Vec<Result<()>>> {
        let inner = &self.inner;
        let jobs: Vec<_> = packs
            .iter()
            .map(|p| {
                let path = pack_path(&inner.prefix, &p.name);
                (path, p.payload(), self.pack_url(&p.name))
            })
            .collect();
        let (objects, conc) = (inner.objects.clone(), inner.opts.concurrency.max(1));
        inner.bridge.run(async move {
            let puts = jobs.into_iter().map(|(path, payload, url)| {
                let objects = objects.clone();
                async move {
                    objects
                        .put(&path, payload)
                        .await
                        .map(|_| ())
                        .map_err(|e| Error::object("store a pack", url, e))
                }
            });
            Ok(futures::stream::iter(puts).buffered(conc).collect().await)
        })
    }

    /// Fetches byte ranges of one pack object concurrently, in order.
    pub(crate) fn fetch_spans(
        &self,
        spans: Vec<(PackName, std::ops::Range<u64>)>,
    ) -> Result<Vec<Result<Bytes>>> {
        let inner = &self.inner;
        let jobs: Vec<_> = spans
            .into_iter()
            .map(|(pack, range)| (pack_path(&inner.prefix, &pack), range, self.pack_url(&pack)))
            .collect();
        let (objects, conc) = (inner.objects.clone(), inner.opts.concurrency.max(1));
        inner.bridge.run(async move {
            let gets = jobs.into_iter().map(|(path, range, url)| {
                let objects = objects.clone();
                async move {
                    objects
                        .get_range(&path, range)
                        .await
                        .map_err(|e| Error::object("read a pack", url, e))
                }
            });
            Ok(futures::stream::iter(gets).buffered(conc).collect().await)
        })
    }

    /// Fetches a whole pack object.
    pub(crate) fn fetch_pack(&self, pack: &PackName) -> Result<Bytes> {
        let inner = &self.inner;
        let (objects, path, url) = (
            inner.objects.clone(),
            pack_path(&inner.prefix, pack),
            self.pack_url(pack),
        );
        inner.bridge.run(async move {
            let got = objects.get(&path).await;
            let got = got.map_err(|e| Error::object("read a pack", url.clone(), e))?;
            got.bytes()
                .await
                .map_err(|e| Error::object("read a pack", url, e))
        })
    }

    /// Deletes pack objects (concurrently); one already gone counts as deleted.
    pub(crate) fn delete_packs(&self, packs: &[PackName]) -> Result<()> {
        let inner = &self.inner;
        let jobs: Vec<_> = packs
            .iter()
            .map(|p| (pack_path(&inner.prefix, p), self.pack_url(p)))
            .collect();
        let (objects, conc) = (inner.objects.clone(), inner.opts.concurrency.max(1));
        inner.bridge.run(async move {
            let dels = jobs.into_iter().map(|(path, url)| {
                let objects = objects.clone();
                async move {
                    match objects.delete(&path).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                        Err(e) => Err(Error::object("delete a pack", url, e)),
                    }
                }
            });
            futures::stream::iter(dels)
                .buffer_unordered(conc)
                .try_collect::<Vec<()>>()
                .await
                .map(|_| ())
        })
    }

    /// Rebuilds index entries from the pack objects: every sound record of every pack is
    /// recorded (first writer wins, so entries already there stay), with its pack's time of
    /// writing as its insert time. For a [`crate::MemIndex`] at start-up, or to repair a lost
    /// index. Returns the number of records found.
    pub fn rebuild_index(&self) -> Result<u64> {
        let mut n = 0;
        for (pack, meta) in self.list_packs()? {
            let object = self.fetch_pack(&pack)?;
            let (found, _damaged) = records_of(&object).map_err(|what| Error::Corrupt {
                id: ChunkId::of(b""),
                url: self.pack_url(&pack),
                offset: 0,
                what,
            })?;
            let entries: Vec<(ChunkId, Location)> = found
                .iter()
                .map(|r| {
                    let loc = Location {
                        pack,
                        offset: r.offset,
                        stored_len: r.header.stored_len,
                        raw_len: r.header.raw_len,
                    };
                    (r.header.id, loc)
                })
                .collect();
            n += entries.len() as u64;
            self.inner
                .index
                .record(&entries, meta.last_modified.timestamp_millis())?;
        }
        Ok(n)
    }
}

async fn read_config(
    objects: &dyn ObjectStore,
    path: &Path,
    url: &str,
) -> Result<Option<StoreConfig>> {
    let got = match objects.get(path).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(Error::object("read the store's config", url, e)),
    };
    let bytes = got
        .bytes()
        .await
        .map_err(|e| Error::object("read the store's config", url, e))?;
    StoreConfig::decode(&bytes)
        .map(Some)
        .map_err(|what| Error::BadConfig {
            url: url.to_owned(),
            what,
        })
}

impl ChunkStore for ObjectChunkStore {
    fn params(&self) -> ChunkParams {
        self.inner.config.params
    }

    /// Writes the chunks the index lacks into new pack objects (one, or several of at most
    /// [`StoreOptions::pack_target`]), and records their entries once the PUTs succeeded: a
    /// chunk reported [`Inserted::New`] is in the object store. Two servers storing the same
    /// chunk at once both report it new; the first entry recorded wins. A chunk already present
    /// is kept from a running collection as [`ChunkStore::missing_and_keep`] keeps it (the
    /// manifests of a commit are stored this way just before it lands).
    fn insert_batch(&self, chunks: &[Chunk]) -> lbsync_chunkstore::Result<Vec<Inserted>> {
        let mut outcome = vec![Inserted::AlreadyPresent; chunks.len()];
        let mut first: HashMap<ChunkId, usize> = HashMap::new();
        let mut unique = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            first.entry(c.id()).or_insert_with(|| {
                unique.push(c.id());
                i
            });
        }
        if unique.is_empty() {
            return Ok(outcome);
        }
        // Touched before the lookup: an entry found present cannot be swept after it.
        self.keep(&unique)?;
        let present = self.inner.index.lookup(&unique)?;
        let mut records = Vec::new();
        for (id, loc) in unique.iter().zip(present) {
            if loc.is_none() {
                let i = first[id];
                records.push(Record::encode(&chunks[i]));
                outcome[i] = Inserted::New;
            }
        }
        if records.is_empty() {
            return Ok(outcome);
        }
        let packs = build_packs(records, self.inner.opts.pack_target)?;
        self.put_packs(packs, now_ms())?;
        Ok(outcome)
    }

    fn get(&self, id: &ChunkId) -> lbsync_chunkstore::Result<Option<Bytes>> {
        Ok(self.read(std::slice::from_ref(id))?.pop().flatten())
    }

    /// One index lookup for all, then concurrent ranged GETs, one per run of neighbouring records
    /// of a pack; every record is checked against its id.
    fn get_batch(&self, ids: &[ChunkId]) -> lbsync_chunkstore::Result<Vec<Option<Bytes>>> {
        Ok(self.read(ids)?)
    }

    fn contains(&self, id: &ChunkId) -> lbsync_chunkstore::Result<bool> {
        Ok(self.inner.index.lookup(std::slice::from_ref(id))?[0].is_some())
    }

    /// One index lookup for all the ids.
    fn missing(&self, ids: &[ChunkId]) -> lbsync_chunkstore::Result<Vec<ChunkId>> {
        Ok(self.missing_inner(ids, false)?)
    }

    /// One touch and one lookup for all the ids: the touch first, so that an id found present
    /// can no longer be swept by a collection (which removes only entries still old).
    fn missing_and_keep(&self, ids: &[ChunkId]) -> lbsync_chunkstore::Result<Vec<ChunkId>> {
        Ok(self.missing_inner(ids, true)?)
    }

    fn gc(
        &self,
        live: &mut dyn Iterator<Item = ManifestId>,
        opts: &GcOptions,
    ) -> lbsync_chunkstore::Result<GcReport> {
        Ok(crate::gc::run(self, live, opts)?)
    }

    /// Counts and sizes from the index; disk bytes and packs from a listing of the pack objects.
    fn stats(&self) -> lbsync_chunkstore::Result<StoreStats> {
        let index = self.inner.index.stats()?;
        let packs = self.list_packs()?;
        Ok(StoreStats {
            chunks: index.chunks,
            raw_bytes: index.raw_bytes,
            stored_bytes: index.stored_bytes,
            disk_bytes: packs.iter().map(|(_, m)| m.size).sum(),
            packs: packs.len() as u64,
        })
    }
}

#[cfg(test)]
mod tests;
