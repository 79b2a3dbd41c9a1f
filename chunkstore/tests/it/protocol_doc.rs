//! docs/PROTOCOL.md's chunking vectors and manifest example, recomputed with the real chunker and
//! manifest code: a change to either (or to the doc) that makes them disagree fails here, so the
//! document an outside client is written from stays true.

#![allow(clippy::unwrap_used)] // a failure is a test failure

use std::fmt::Write as _;

use lbsync_chunkstore::{ChunkParams, ChunkRef, Chunker, Manifest};

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    std::fs::read_to_string(path).unwrap()
}

/// The fenced block after `<!-- vector NAME -->` in the doc, its lines without the fences.
fn block(doc: &str, name: &str) -> String {
    let marker = format!("<!-- vector {name} -->");
    let at = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no {marker}"));
    let rest = &doc[at + marker.len()..];
    let open = rest.find("```").unwrap();
    let body = &rest[open..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_owned()
}

/// The doc's generator: xorshift64 (shifts 13, 7, 17) from `seed`, each state's 8 bytes
/// little-endian, cut to `len`.
fn xorshift_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `offset length id` lines of the chunks of `data`, cut by the real chunker.
fn cut_lines(data: &[u8], params: ChunkParams) -> String {
    let mut out = String::new();
    for c in Chunker::new(data, params) {
        let (offset, chunk) = c.unwrap();
        writeln!(out, "{offset} {} {}", chunk.len(), chunk.id()).unwrap();
    }
    out
}

fn assert_block(name: &str, want: &str) {
    let got = block(&doc(), name);
    assert_eq!(
        got, want,
        "docs/PROTOCOL.md's `{name}` block disagrees with the code; the code says:\n{want}"
    );
}

#[test]
fn the_small_file_vector_is_what_the_chunker_cuts() {
    let data = xorshift_bytes(1, 256 << 10);
    assert_block("small", &cut_lines(&data, ChunkParams::DEFAULT));
}

#[test]
fn the_large_file_vector_is_what_the_chunker_cuts_with_the_large_class() {
    let large = ChunkParams::DEFAULT.for_file(ChunkParams::LARGE_FILE);
    assert_eq!(
        (large.min_size, large.avg_size, large.max_size),
        (32 << 10, 128 << 10, 1 << 20),
        "the doc's large-file class"
    );
    let data = xorshift_bytes(2, 2 << 20);
    assert_block("large", &cut_lines(&data, large));
}

#[test]
fn the_zeros_vector_cuts_at_the_maximum() {
    assert_block("zeros", &cut_lines(&[0u8; 150_000], ChunkParams::DEFAULT));
}

#[test]
fn the_manifest_example_is_the_real_encoding_and_id() {
    let refs: Vec<ChunkRef> = Chunker::new(&[0u8; 150_000][..], ChunkParams::DEFAULT)
        .map(|c| c.unwrap().1.chunk_ref())
        .collect();
    let m = Manifest::new(refs);
    let enc = m.encode();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut want = String::new();
    writeln!(want, "{:<75}version", hex(&enc[0..1])).unwrap();
    writeln!(want, "{:<75}size {} (u64 LE)", hex(&enc[1..9]), m.size()).unwrap();
    writeln!(
        want,
        "{:<75}chunk count {} (u32 LE)",
        hex(&enc[9..13]),
        m.chunks().len()
    )
    .unwrap();
    for (i, (e, c)) in enc[13..].chunks(36).zip(m.chunks()).enumerate() {
        writeln!(
            want,
            "{} {}  chunk {i}: id, length {} (u32 LE)",
            hex(&e[..32]),
            hex(&e[32..]),
            c.len
        )
        .unwrap();
    }
    writeln!(want, "manifest id {}", m.id()).unwrap();
    assert_block("manifest", &want);

    let empty = Manifest::empty();
    let mut want = String::new();
    writeln!(want, "encoding    {}", hex(&empty.encode())).unwrap();
    writeln!(want, "manifest id {}", empty.id()).unwrap();
    assert_block("empty-manifest", &want);
}

#[test]
fn the_generator_is_the_one_the_doc_spells_out() {
    // The first state from seed 1, by hand: 1 ^ 1<<13 = 0x2001; ^ >>7 = 0x2041; ^ <<17.
    let s = 0x2041u64 ^ (0x2041u64 << 17);
    assert_eq!(xorshift_bytes(1, 8), s.to_le_bytes());
    assert_block("xorshift", &format!("{}\n", hex16(&xorshift_bytes(1, 16))));
}

fn hex16(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
