//! The read path of [`ObjectChunkStore`]: cache, one index lookup, coalesced ranged GETs, every
//! record checked; a damaged record is read once more, then forgotten and reported corrupt.

use std::collections::HashMap;

use bytes::Bytes;
use lbsync_chunkstore::ChunkId;

use crate::error::{Error, Result};
use crate::index::{Location, PackName};
use crate::pack::{Span, coalesce, decode_record};
use crate::store::ObjectChunkStore;

impl ObjectChunkStore {
    /// Reads chunks through the index: the cache first, then one lookup for the rest, then
    /// coalesced ranged GETs, each record checked. A pack gone since the lookup (a collection
    /// repacked or deleted it) is looked up once more.
    pub(crate) fn read(&self, ids: &[ChunkId]) -> Result<Vec<Option<Bytes>>> {
        let inner = &self.inner;
        let mut out: Vec<Option<Bytes>> = vec![None; ids.len()];
        // Each distinct id not in the cache, with the positions asking for it.
        let mut wanted: HashMap<ChunkId, Vec<usize>> = HashMap::new();
        let mut order = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            if let Some(b) = inner.cache.get(id) {
                out[i] = Some(b);
            } else {
                let slots = wanted.entry(*id).or_default();
                if slots.is_empty() {
                    order.push(*id);
                }
                slots.push(i);
            }
        }
        if order.is_empty() {
            return Ok(out);
        }
        let found = self.fetch_checked(&order, true)?;
        for (id, bytes) in order.iter().zip(found) {
            if let Some(b) = &bytes {
                inner.cache.insert(*id, b.clone());
            }
            for &slot in &wanted[id] {
                out[slot] = bytes.clone();
            }
        }
        Ok(out)
    }

    /// The checked bytes of distinct `ids` (`None` where the index holds none).
    fn fetch_checked(&self, ids: &[ChunkId], retry: bool) -> Result<Vec<Option<Bytes>>> {
        let inner = &self.inner;
        let locations = inner.index.lookup(ids)?;
        let mut by_pack: HashMap<PackName, Vec<(usize, std::ops::Range<u64>)>> = HashMap::new();
        for (i, loc) in locations.iter().enumerate() {
            if let Some(l) = loc {
                by_pack.entry(l.pack).or_default().push((i, l.range()));
            }
        }
        let mut spans: Vec<(PackName, Span)> = Vec::new();
        for (pack, wants) in by_pack {
            for span in coalesce(wants, inner.opts.coalesce_gap, inner.opts.max_span) {
                spans.push((pack, span));
            }
        }
        let fetched =
            self.fetch_spans(spans.iter().map(|(p, s)| (*p, s.range.clone())).collect())?;
        let mut out: Vec<Option<Bytes>> = vec![None; ids.len()];
        let mut again = Vec::new();
        for ((pack, span), got) in spans.iter().zip(fetched) {
            let body = match got {
                Ok(b) => b,
                Err(e) if retry && e.is_not_found() => {
                    again.extend(span.members.iter().map(|(i, _)| *i));
                    continue;
                }
                Err(e) => return Err(e),
            };
            for (i, r) in &span.members {
                let loc = locations[*i].as_ref().expect("spans hold located ids");
                let start = (r.start - span.range.start) as usize;
                let end = (r.end - span.range.start) as usize;
                let record = body.get(start..end.min(body.len())).unwrap_or(&[]);
                out[*i] = Some(match decode_record(&ids[*i], loc, record) {
                    Ok(b) => b,
                    Err(what) => self.reread_or_forget(&ids[*i], pack, loc, what)?,
                });
            }
        }
        if !again.is_empty() {
            let retry_ids: Vec<ChunkId> = again.iter().map(|i| ids[*i]).collect();
            for (i, b) in again
                .into_iter()
                .zip(self.fetch_checked(&retry_ids, false)?)
            {
                out[i] = b;
            }
        }
        Ok(out)
    }

    /// A record that did not check out is fetched once more on its own (a fault on the way is
    /// not damage); if it fails again, the index forgets the chunk, so that `missing` reports it
    /// and the next upload of it stores a sound copy, and the answer is [`Error::Corrupt`].
    fn reread_or_forget(
        &self,
        id: &ChunkId,
        pack: &PackName,
        loc: &Location,
        what: String,
    ) -> Result<Bytes> {
        let again = self.fetch_spans(vec![(*pack, loc.range())])?.pop();
        let what = match again {
            Some(Ok(record)) => match decode_record(id, loc, &record) {
                Ok(b) => return Ok(b),
                Err(what) => what,
            },
            Some(Err(e)) => return Err(e),
            None => what,
        };
        let forgot = self.inner.index.remove(&[(*id, *pack)])? > 0;
        self.inner.cache.remove(id);
        Err(Error::Corrupt {
            id: *id,
            url: self.pack_url(pack),
            offset: loc.offset,
            what: if forgot {
                format!("{what}; the index forgot it, so it is reported missing and uploaded again")
            } else {
                what
            },
        })
    }
}
