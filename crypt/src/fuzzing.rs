//! Entry points for the fuzz targets in `fuzz/` (built with nightly by `cargo fuzz`), compiled
//! here so that they build and run on stable in the tests.

use lbsync_chunkstore::{ChunkId, ManifestId};
use lbsync_proto::{Entry, EntryKind, SyncPath};

use crate::{Error, FolderKey};

fn tampered<T>(r: &crate::Result<T>) -> bool {
    matches!(r, Err(Error::Tampered { .. }))
}

/// XORs `mask` into `bytes` (cyclically over the shorter): a fuzzer-chosen change.
fn mutate(bytes: &mut [u8], mask: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    for (i, m) in mask.iter().enumerate() {
        bytes[i % bytes.len()] ^= m;
    }
}

/// Opening what the server could send never panics, and opens only what the key sealed: the
/// first byte picks a target (raw bytes as a chunk, a changed sealed chunk, a path, a changed
/// sealed entry); any change to sealed bytes is [`Error::Tampered`].
pub fn open_sealed(data: &[u8]) {
    let c = FolderKey::from_bytes([0x5a; 32]).crypt();
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 4 {
        0 => {
            let id = ChunkId::of(rest);
            assert!(tampered(&c.open_chunk(&id, rest, 1 << 20)));
            if rest.len() >= 32 {
                let id = ChunkId::from_slice(&rest[..32]).expect("32 bytes");
                assert!(tampered(&c.open_chunk(&id, &rest[32..], 1 << 20)));
            }
        }
        1 => {
            let (pt, mask) = rest.split_at(rest.len() / 2);
            let sealed = c.seal_chunk(pt);
            let mut bad = sealed.bytes.to_vec();
            mutate(&mut bad, mask);
            let opened = c.open_chunk(&ChunkId::of(&bad), &bad, pt.len());
            if bad[..] == sealed.bytes[..] {
                assert_eq!(opened.expect("an unchanged chunk opens"), pt);
            } else {
                assert!(tampered(&opened));
                assert!(tampered(&c.open_chunk(&sealed.id, &bad, pt.len())));
            }
        }
        2 => {
            if let Ok(p) = SyncPath::new(String::from_utf8_lossy(rest).into_owned()) {
                assert!(c.open_path(&p).is_err());
                match c.seal_path(&p) {
                    Ok(s) => {
                        assert!(crate::sealed_path_shape_ok(s.as_str()));
                        assert_eq!(c.open_path(&s).expect("a sealed path opens"), p);
                    }
                    Err(e) => assert!(matches!(e, Error::PathTooLong { .. }), "{e}"),
                }
            }
        }
        _ => {
            let (head, mask) = rest.split_at(rest.len().min(3));
            let mut e = Entry::new(
                SyncPath::new("dir/file").expect("valid"),
                EntryKind::File,
                "device",
            );
            e.size = 77;
            e.manifest = Some(ManifestId::of(b"m"));
            let sealed = c.seal_entry(&e, 3).expect("seals");
            let mut bad = sealed.clone();
            mutate(&mut bad.sealed, mask);
            if let Some(&v) = head.first() {
                bad.version ^= u64::from(v);
            }
            if let Some(&k) = head.get(1) {
                bad.kind =
                    [EntryKind::File, EntryKind::Dir, EntryKind::Symlink][usize::from(k % 3)];
            }
            if let Some(&d) = head.get(2) {
                bad.deleted ^= d & 1 == 1;
            }
            let opened = c.open_entry(&bad);
            if bad == sealed {
                assert_eq!(opened.expect("an unchanged entry opens").size, 77);
            } else {
                assert!(tampered(&opened));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{RngCore, SeedableRng};

    #[test]
    fn open_sealed_holds_on_random_inputs() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(19);
        for i in 0..2000 {
            let mut data = vec![0u8; (i % 300) + 1];
            rng.fill_bytes(&mut data);
            super::open_sealed(&data);
            // Unchanged inputs (all-zero masks) open.
            data[1..].fill(0);
            super::open_sealed(&data);
        }
        super::open_sealed(&[]);
        super::open_sealed(b"\x02a/b/c");
    }
}
