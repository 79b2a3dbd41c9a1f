//! The contract every [`ChunkStore`] keeps, as one test suite that any implementation runs:
//! [`run`] against an empty store. [`crate::MemStore`] and [`crate::PackStore`] run it here;
//! stores in other crates (the object store of `lbsync-objstore`) run it through the
//! `contract-tests` feature.
//!
//! A broken promise panics (these are tests); an error of the store is returned, so the caller
//! sees what failed. The chunks are made from `tag`, so that runs against a shared store (an S3
//! bucket under a fresh prefix) never meet each other's data.

use std::time::Duration;

use bytes::Bytes;

use crate::chunk::Chunk;
use crate::error::{Error, Result};
use crate::id::{ChunkId, ManifestId};
use crate::manifest::{ChunkRef, Manifest};
use crate::store::{ChunkStore, GcOptions, Inserted};

/// `len` bytes that look random, made from `tag` and `n`.
pub fn noise(tag: &str, n: u32, len: usize) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(tag.as_bytes());
    h.update(&n.to_le_bytes());
    let mut out = vec![0u8; len];
    h.finalize_xof().fill(&mut out);
    out
}

/// A chunk of `len` random-looking bytes.
pub fn noise_chunk(tag: &str, n: u32, len: usize) -> Chunk {
    Chunk::new(noise(tag, n, len))
}

/// Runs the whole contract against `store`, which must be empty (or at least hold nothing made
/// from `tag`) and must not be used by anyone else meanwhile: the garbage collection steps sweep
/// what they do not see referenced.
pub fn run(store: &dyn ChunkStore, tag: &str) -> Result<()> {
    store.params().validate()?;
    inserts_and_reads(store, tag)?;
    manifests_stats_and_gc(store, &format!("{tag}/gc"))?;
    Ok(())
}

/// Inserts (new, duplicates inside a batch and across batches), reads one at a time and batched,
/// `contains` and `missing`.
pub fn inserts_and_reads(store: &dyn ChunkStore, tag: &str) -> Result<()> {
    let a = noise_chunk(tag, 1, 5000);
    let b = Chunk::new(format!("{tag}: a line that compresses well\n").repeat(400));
    let c = noise_chunk(tag, 3, 1 << 20);
    let absent = ChunkId::of(format!("{tag}: never stored").as_bytes());

    assert_eq!(store.get(&a.id())?, None, "an empty store holds nothing");
    assert!(!store.contains(&a.id())?);
    assert_eq!(store.get_batch(&[a.id(), absent])?, vec![None, None]);

    let got = store.insert_batch(&[a.clone(), b.clone(), a.clone(), c.clone()])?;
    assert_eq!(
        got,
        [
            Inserted::New,
            Inserted::New,
            Inserted::AlreadyPresent,
            Inserted::New
        ],
        "one outcome per chunk; a duplicate inside the batch is already present"
    );
    assert_eq!(store.insert(&a)?, Inserted::AlreadyPresent);
    assert_eq!(store.insert_batch(&[])?, vec![]);

    for chunk in [&a, &b, &c] {
        assert_eq!(store.get(&chunk.id())?.as_ref(), Some(chunk.data()));
        assert!(store.contains(&chunk.id())?);
    }
    assert!(!store.contains(&absent)?);
    let batch = store.get_batch(&[c.id(), absent, a.id(), b.id(), a.id()])?;
    let want: Vec<Option<Bytes>> = vec![
        Some(c.data().clone()),
        None,
        Some(a.data().clone()),
        Some(b.data().clone()),
        Some(a.data().clone()),
    ];
    assert!(
        batch == want,
        "get_batch answers in order, None where absent"
    );

    let other = ChunkId::of(format!("{tag}: also never stored").as_bytes());
    assert_eq!(
        store.missing(&[a.id(), absent, other, absent, b.id()])?,
        vec![absent, other],
        "missing: the absent ids, first-seen order, each once"
    );
    assert_eq!(store.missing(&[])?, vec![]);

    // Many small chunks in one batch, then read back in one batch.
    let many: Vec<Chunk> = (0..200).map(|n| noise_chunk(tag, 100 + n, 700)).collect();
    let got = store.insert_batch(&many)?;
    assert!(got.iter().all(|i| *i == Inserted::New));
    let ids: Vec<ChunkId> = many.iter().map(|c| c.id()).rev().collect();
    let back = store.get_batch(&ids)?;
    for (chunk, bytes) in many.iter().rev().zip(back) {
        assert_eq!(bytes.as_ref(), Some(chunk.data()));
    }
    Ok(())
}

/// Manifests round trip; stats count what was stored; gc keeps what is live or young, sweeps the
/// rest, stops before deleting anything when a live manifest is missing, and a swept chunk can
/// be stored again.
pub fn manifests_stats_and_gc(store: &dyn ChunkStore, tag: &str) -> Result<()> {
    let before = store.stats()?;
    let live_a = noise_chunk(tag, 1, 3000);
    let live_b = noise_chunk(tag, 2, 4000);
    let dead = noise_chunk(tag, 3, 6000);
    let dead_too = Chunk::new(format!("{tag}: dead and compressible\n").repeat(100));
    store.insert_batch(&[
        live_a.clone(),
        live_b.clone(),
        dead.clone(),
        dead_too.clone(),
    ])?;
    let manifest = Manifest::new(vec![live_a.chunk_ref(), live_b.chunk_ref()]);
    let mid = store.put_manifest(&manifest)?;
    assert_eq!(store.get_manifest(&mid)?, Some(manifest.clone()));
    let unknown = ManifestId::from_bytes(*ChunkId::of(tag.as_bytes()).as_bytes());
    assert_eq!(store.get_manifest(&unknown)?, None);

    let stats = store.stats()?;
    assert_eq!(
        stats.chunks,
        before.chunks + 5,
        "four chunks and a manifest"
    );
    let added: u64 = [&live_a, &live_b, &dead, &dead_too]
        .iter()
        .map(|c| c.len() as u64)
        .sum::<u64>()
        + manifest.encode().len() as u64;
    assert_eq!(stats.raw_bytes, before.raw_bytes + added);
    assert!(stats.stored_bytes <= stats.raw_bytes);
    assert!(stats.disk_bytes >= stats.stored_bytes);

    // A live manifest the store lacks stops the collection before anything goes.
    let err = store
        .gc(
            &mut [mid, unknown].into_iter(),
            &GcOptions {
                grace: Duration::ZERO,
                ..GcOptions::default()
            },
        )
        .expect_err("a missing live manifest is an error");
    assert!(
        matches!(err, Error::MissingManifest(m) if m == unknown),
        "{err}"
    );
    assert!(store.contains(&dead.id())?, "nothing was swept");

    // Everything is young: nothing goes.
    let report = store.gc(&mut [mid].into_iter(), &GcOptions::default())?;
    assert_eq!(report.live_chunks, 3, "the manifest and its two chunks");
    assert_eq!(report.swept_chunks, 0, "nothing young is swept");
    assert!(report.kept_in_grace >= 2);
    assert!(store.contains(&dead.id())? && store.contains(&dead_too.id())?);

    // A dry run says what would go and changes nothing.
    let no_grace = GcOptions {
        grace: Duration::ZERO,
        repack_below: 0.5,
        dry_run: true,
    };
    let dry = store.gc(&mut [mid].into_iter(), &no_grace)?;
    assert!(dry.swept_chunks >= 2, "{dry:?}");
    assert!(store.contains(&dead.id())?, "a dry run sweeps nothing");

    let report = store.gc(
        &mut [mid].into_iter(),
        &GcOptions {
            dry_run: false,
            ..no_grace
        },
    )?;
    assert_eq!(report.live_chunks, 3);
    assert_eq!(report.swept_chunks, dry.swept_chunks);
    assert!(report.swept_bytes >= (dead.len() + dead_too.len()) as u64);
    for gone in [&dead, &dead_too] {
        assert!(!store.contains(&gone.id())?, "unreachable and old: swept");
        assert_eq!(store.get(&gone.id())?, None);
    }
    for kept in [&live_a, &live_b] {
        assert_eq!(store.get(&kept.id())?.as_ref(), Some(kept.data()));
    }
    assert_eq!(store.get_manifest(&mid)?, Some(manifest));
    let after = store.stats()?;
    assert_eq!(after.chunks, 3, "only the live ones are left: {after:?}");

    // A swept chunk comes back when it is stored again.
    assert_eq!(store.insert(&dead)?, Inserted::New);
    assert_eq!(store.get(&dead.id())?.as_ref(), Some(dead.data()));
    let refs: Vec<ChunkRef> = vec![dead.chunk_ref()];
    let mid2 = store.put_manifest(&Manifest::new(refs))?;
    let report = store.gc(&mut [mid, mid2].into_iter(), &GcOptions::default())?;
    assert_eq!((report.live_chunks, report.swept_chunks), (5, 0));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_store_keeps_the_contract() {
        run(&crate::MemStore::default(), "mem").unwrap();
    }

    #[cfg(feature = "sled")]
    #[test]
    fn pack_store_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::PackStore::open(dir.path()).unwrap();
        run(&store, "pack").unwrap();
    }
}
