#!/usr/bin/env python3
"""A small lbsync client in Python, written from proto/lbsync/v1/sync.proto and docs/PROTOCOL.md
alone: it is the proof that those two documents are enough to write a client.

    python3 lbsync_py.py --server URL --folder F upload FILE PATH
    python3 lbsync_py.py --server URL --folder F download PATH OUT
    python3 lbsync_py.py --server URL --folder F wait-for PATH [OUT] [--timeout S]
    python3 lbsync_py.py check-vectors [--doc docs/PROTOCOL.md]

Needs grpcio, grpcio-tools, protobuf, blake3 and zstandard (requirements.txt). The gRPC stubs are
generated from proto/ into a temporary directory each run, with `python -m grpc_tools.protoc`.
A token, when the server wants one, comes from --token-file FILE (its first line) or $LBSYNC_TOKEN.
"""

import argparse
import hashlib
import importlib
import io
import math
import os
import re
import subprocess
import sys
import tempfile
import time

import blake3
import grpc
import zstandard

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# PROTOCOL.md, "Transport": the version to send in the handshake.
PROTOCOL_VERSION = 3
# PROTOCOL.md, "The file's parameter class".
LARGE_FILE = 4 << 30
LARGE_CAP = 1 << 20
M64 = (1 << 64) - 1


class ClientError(Exception):
    """A failure to report to the person, with what to do."""


# ---------------------------------------------------------------------------------------------
# Stubs

def load_stubs(proto_dir):
    """Generates the Python stubs of sync.proto into a temp dir and imports them."""
    out = tempfile.mkdtemp(prefix="lbsync-py-stubs-")
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc", "-I", proto_dir,
        "--python_out", out, "--grpc_python_out", out, "lbsync/v1/sync.proto",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise ClientError(f"protoc failed on {proto_dir}: {res.stderr.strip()}")
    sys.path.insert(0, out)
    pb = importlib.import_module("lbsync.v1.sync_pb2")
    rpc = importlib.import_module("lbsync.v1.sync_pb2_grpc")
    return pb, rpc


# ---------------------------------------------------------------------------------------------
# Chunking: FastCDC v2020, normalization level 2 (PROTOCOL.md, "The algorithm")

# GEAR[i]: the first 8 bytes, big-endian, of MD5 of 64 bytes all equal to i.
GEAR = [int.from_bytes(hashlib.md5(bytes([i]) * 64).digest()[:8], "big") for i in range(256)]
GEAR_LS = [(g << 1) & M64 for g in GEAR]

MASKS = {
    5: 0x0000000001804110, 6: 0x0000000001803110, 7: 0x0000000018035100,
    8: 0x0000001800035300, 9: 0x0000019000353000, 10: 0x0000590003530000,
    11: 0x0000d90003530000, 12: 0x0000d90103530000, 13: 0x0000d90303530000,
    14: 0x0000d90313530000, 15: 0x0000d90f03530000, 16: 0x0000d90303537000,
    17: 0x0000d90703537000, 18: 0x0000d90707537000, 19: 0x0000d91707537000,
    20: 0x0000d91747537000, 21: 0x0000d91767537000, 22: 0x0000d93767537000,
    23: 0x0000d93777537000, 24: 0x0000d93777577000, 25: 0x0000db3777577000,
}


def valid_params(p):
    mn, avg, mx = p
    return (mn % 2 == 0 and avg % 2 == 0 and mx % 2 == 0 and mn < avg < mx
            and 64 <= mn <= 1048576 and 256 <= avg <= 4194304 and 1024 <= mx <= 1048576)


def params_for_file(params, size):
    """The parameters a file of `size` bytes is cut with."""
    if size < LARGE_FILE:
        return params
    large = tuple(min(v * 16, LARGE_CAP) for v in params)
    return large if valid_params(large) else params


def cut_points(data, params):
    """(offset, length) of each chunk of `data`."""
    mn, avg, mx = params
    bits = int(math.floor(math.log2(avg) + 0.5))
    mask_s, mask_l = MASKS[bits + 2], MASKS[bits - 2]
    mask_s_ls, mask_l_ls = (mask_s << 1) & M64, (mask_l << 1) & M64
    gear, gear_ls = GEAR, GEAR_LS
    out = []
    start, total = 0, len(data)
    while start < total:
        n = total - start
        length = n
        if n > mn:
            center = avg
            if n > mx:
                n = mx
            elif n < center:
                center = n
            length = n
            h = 0
            i = mn // 2
            found = False
            for mask_a, mask_b, limit in ((mask_s_ls, mask_s, center // 2),
                                          (mask_l_ls, mask_l, n // 2)):
                while i < limit:
                    a = 2 * i
                    h = ((h << 2) + gear_ls[data[start + a]]) & M64
                    if h & mask_a == 0:
                        length, found = a, True
                        break
                    h = (h + gear[data[start + a + 1]]) & M64
                    if h & mask_b == 0:
                        length, found = a + 1, True
                        break
                    i += 1
                if found:
                    break
        out.append((start, length))
        start += length
    return out


def chunk_id(data):
    return blake3.blake3(data).digest()


# ---------------------------------------------------------------------------------------------
# Manifests (PROTOCOL.md, "Manifests"): u8 version 1, u64 size, u32 count, count x (id, u32 len),
# little-endian.

def encode_manifest(refs):
    size = sum(length for _, length in refs)
    out = bytearray([1])
    out += size.to_bytes(8, "little") + len(refs).to_bytes(4, "little")
    for cid, length in refs:
        out += cid + length.to_bytes(4, "little")
    return bytes(out)


def decode_manifest(b):
    if len(b) < 13 or b[0] != 1:
        raise ClientError("the server sent a manifest that is not version 1")
    size = int.from_bytes(b[1:9], "little")
    count = int.from_bytes(b[9:13], "little")
    if len(b) != 13 + 36 * count:
        raise ClientError("the server sent a manifest whose count does not match its length")
    refs = [(b[13 + 36 * i:45 + 36 * i], int.from_bytes(b[45 + 36 * i:49 + 36 * i], "little"))
            for i in range(count)]
    if sum(length for _, length in refs) != size:
        raise ClientError("the server sent a manifest whose chunk lengths do not add up")
    return size, refs


# ---------------------------------------------------------------------------------------------
# The client

class Client:
    def __init__(self, pb, rpc, url, folder, device, token=None, ca_file=None):
        self.pb, self.folder, self.device = pb, folder, device
        self.md = [("authorization", f"Bearer {token}")] if token else []
        m = re.fullmatch(r"(https?)://([^/]+)/?", url)
        if not m:
            raise ClientError(f"bad server URL {url!r}: expected http://HOST:PORT or https://...")
        limit = 64 << 20
        opts = [("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit)]
        if m.group(1) == "https":
            roots = open(ca_file, "rb").read() if ca_file else None
            creds = grpc.ssl_channel_credentials(root_certificates=roots)
            self.channel = grpc.secure_channel(m.group(2), creds, options=opts)
        else:
            self.channel = grpc.insecure_channel(m.group(2), options=opts)
        self.stub = rpc.SyncStub(self.channel)
        self.hs = None

    def handshake(self):
        self.hs = self.stub.Handshake(
            self.pb.HandshakeRequest(protocol_version=PROTOCOL_VERSION, folder=self.folder,
                                     device=self.device),
            metadata=self.md)
        self.max_ids = self.hs.max_ids_per_request or 65536
        p = self.hs.params
        self.params = (p.min_size, p.avg_size, p.max_size)
        return self.hs

    # -- upload ---------------------------------------------------------------------------

    def current(self, path):
        """The path's current entry (None when it never existed), from History."""
        h = self.stub.History(self.pb.HistoryRequest(folder=self.folder, path=path.encode()),
                              metadata=self.md)
        return h.versions[0] if h.versions else None

    def missing(self, ids):
        out = set()
        for i in range(0, len(ids), self.max_ids):
            r = self.stub.MissingChunks(
                self.pb.MissingChunksRequest(ids=b"".join(ids[i:i + self.max_ids]),
                                             folder=self.folder),
                metadata=self.md)
            out.update(r.missing[j:j + 32] for j in range(0, len(r.missing), 32))
        return out

    def put(self, chunks):
        """Uploads (id, bytes) pairs uncompressed, in messages of at most ~8 MiB."""
        pb, folder = self.pb, self.folder

        def messages():
            yield pb.PutChunksRequest(folder=folder)
            batch, size = [], 0
            for cid, data in chunks:
                batch.append(pb.ChunkData(id=cid, compression=pb.COMPRESSION_NONE,
                                          raw_len=len(data), data=data))
                size += len(data)
                if size >= 8 << 20:
                    yield pb.PutChunksRequest(chunks=batch)
                    batch, size = [], 0
            if batch:
                yield pb.PutChunksRequest(chunks=batch)

        return self.stub.PutChunks(messages(), metadata=self.md)

    def upload(self, local, path):
        data = open(local, "rb").read()
        st = os.stat(local)
        pieces = [data[o:o + n] for o, n in cut_points(data, params_for_file(self.params,
                                                                              len(data)))]
        chunks = {}
        refs = []
        for piece in pieces:
            cid = chunk_id(piece)
            chunks[cid] = piece
            refs.append((cid, len(piece)))
        lacking = self.missing(list(chunks))
        self.put((cid, chunks[cid]) for cid in chunks if cid in lacking)
        cur = self.current(path)
        base = cur.version if cur is not None and not cur.deleted else 0
        entry = self.pb.Entry(path=path.encode(), kind=self.pb.ENTRY_KIND_FILE, size=len(data),
                              mode=st.st_mode & 0o7777, mtime_ns=st.st_mtime_ns,
                              device=self.device)
        req = self.pb.CommitRequest(folder=self.folder, entry=entry, base_version=base,
                                    manifest=encode_manifest(refs))
        for attempt in (1, 2):
            try:
                r = self.stub.Commit(req, metadata=self.md)
                break
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.FAILED_PRECONDITION or attempt == 2:
                    raise
                # The chunks the server lacks, in the `lbsync-missing-ids-bin` trailer.
                ids = dict(e.trailing_metadata() or ()).get("lbsync-missing-ids-bin", b"")
                self.put((ids[j:j + 32], chunks[ids[j:j + 32]]) for j in range(0, len(ids), 32))
        if r.WhichOneof("result") == "conflict":
            raise ClientError(f"{path} changed on the server (now v{r.conflict.current.version}) "
                              "while uploading: download it, then upload again")
        return r.committed, len(lacking), len(chunks)

    # -- download -------------------------------------------------------------------------

    def download_entry(self, entry, out):
        if entry.deleted or entry.kind != self.pb.ENTRY_KIND_FILE:
            raise ClientError(f"{entry.path.decode()} is not a file on the server")
        r = self.stub.GetManifest(self.pb.GetManifestRequest(manifest_id=entry.manifest_id,
                                                             folder=self.folder),
                                  metadata=self.md)
        if blake3.blake3(r.manifest).digest() != entry.manifest_id:
            raise ClientError("the server sent a manifest that is not the one asked for")
        size, refs = decode_manifest(r.manifest)
        distinct = list(dict.fromkeys(cid for cid, _ in refs))
        got = {}
        dz = zstandard.ZstdDecompressor()
        for i in range(0, len(distinct), self.max_ids):
            want = distinct[i:i + self.max_ids]
            stream = self.stub.GetChunks(self.pb.GetChunksRequest(ids=b"".join(want),
                                                                  folder=self.folder),
                                         metadata=self.md)
            for msg in stream:
                for c in msg.chunks:
                    if c.base_ids:
                        raise ClientError("the server sent a delta, which was not asked for")
                    if c.compression == self.pb.COMPRESSION_ZSTD:
                        # Read at most one byte more than declared: a frame never inflates
                        # beyond what it said.
                        data = dz.stream_reader(io.BytesIO(c.data)).read(c.raw_len + 1)
                    elif c.compression == self.pb.COMPRESSION_NONE:
                        data = c.data
                    else:
                        raise ClientError(f"unknown compression {c.compression}")
                    if len(data) != c.raw_len or chunk_id(data) != c.id:
                        raise ClientError(f"chunk {c.id.hex()} does not match its id")
                    got[c.id] = data
        body = bytearray()
        for cid, length in refs:
            if cid not in got or len(got[cid]) != length:
                raise ClientError(f"chunk {cid.hex()} did not arrive")
            body += got[cid]
        if len(body) != size or size != entry.size:
            raise ClientError("the file's chunks do not add up to its size")
        tmp = f"{out}.lbsync-py-tmp"
        with open(tmp, "wb") as f:
            f.write(body)
        os.chmod(tmp, entry.mode & 0o777)
        os.replace(tmp, out)
        return size

    def download(self, path, out):
        cur = self.current(path)
        if cur is None:
            raise ClientError(f"{path} is not on the server")
        return self.download_entry(cur, out)

    # -- changes --------------------------------------------------------------------------

    def wait_for(self, path, timeout):
        """Follows Changes from cursor 0 until `path` is a live file; returns its entry."""
        want = path.encode()
        stream = self.stub.Changes(self.pb.ChangesRequest(folder=self.folder, cursor=0),
                                   metadata=self.md, timeout=timeout)
        cursor = 0
        try:
            for msg in stream:
                for e in msg.entries:
                    if e.path == want and not e.deleted and e.kind == self.pb.ENTRY_KIND_FILE:
                        stream.cancel()
                        return e
                cursor = msg.cursor
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ClientError(f"{path} did not appear within {timeout} s "
                                  f"(followed changes up to seq {cursor})") from None
            raise
        raise ClientError("the server closed the Changes stream")


# ---------------------------------------------------------------------------------------------
# The doc's vectors (PROTOCOL.md, "Test vectors")

def xorshift_bytes(seed, length):
    s, out = seed, bytearray()
    while len(out) < length:
        s ^= (s << 13) & M64
        s ^= s >> 7
        s ^= (s << 17) & M64
        out += s.to_bytes(8, "little")
    return bytes(out[:length])


def doc_block(doc, name):
    at = doc.index(f"<!-- vector {name} -->")
    rest = doc[at:]
    body = rest[rest.index("```"):]
    body = body[body.index("\n") + 1:]
    return body[:body.index("```")]


def vector_lines(data, params):
    return "".join(f"{o} {n} {chunk_id(data[o:o + n]).hex()}\n"
                   for o, n in cut_points(data, params))


def check_vectors(doc_path):
    doc = open(doc_path, encoding="utf-8").read()
    problems = []

    def expect(name, got):
        if doc_block(doc, name) != got:
            problems.append(f"vector {name}: this client computes\n{got}")

    for i, want in ((0, 0x3b5d3c7d207e37dc), (1, 0x784d68ba91123086),
                    (255, 0xaabd2b2a451504e1)):
        if GEAR[i] != want:
            problems.append(f"GEAR[{i}] is {GEAR[i]:#x}")
    expect("xorshift", xorshift_bytes(1, 16).hex() + "\n")
    default = (2048, 8192, 65536)
    large = params_for_file(default, LARGE_FILE)
    if large != (32768, 131072, 1048576):
        problems.append(f"large-file class {large}")
    expect("small", vector_lines(xorshift_bytes(1, 256 << 10), default))
    expect("large", vector_lines(xorshift_bytes(2, 2 << 20), large))
    zeros = bytes(150000)
    expect("zeros", vector_lines(zeros, default))
    refs = [(chunk_id(zeros[o:o + n]), n) for o, n in cut_points(zeros, default)]
    enc = encode_manifest(refs)
    text = f"{enc[0:1].hex():<75}version\n"
    text += f"{enc[1:9].hex():<75}size {len(zeros)} (u64 LE)\n"
    text += f"{enc[9:13].hex():<75}chunk count {len(refs)} (u32 LE)\n"
    for i, (cid, n) in enumerate(refs):
        text += f"{cid.hex()} {n.to_bytes(4, 'little').hex()}  chunk {i}: id, length {n} (u32 LE)\n"
    text += f"manifest id {blake3.blake3(enc).hexdigest()}\n"
    expect("manifest", text)
    empty = encode_manifest([])
    expect("empty-manifest",
           f"encoding    {empty.hex()}\nmanifest id {blake3.blake3(empty).hexdigest()}\n")
    return problems


# ---------------------------------------------------------------------------------------------
# The command line

def main(argv=None):
    ap = argparse.ArgumentParser(prog="lbsync_py.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default="http://127.0.0.1:7700")
    ap.add_argument("--folder", default="default")
    ap.add_argument("--device", default="python")
    ap.add_argument("--token-file")
    ap.add_argument("--ca-file")
    ap.add_argument("--proto", default=os.path.join(REPO, "proto"),
                    help="the directory holding lbsync/v1/sync.proto")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("upload", help="upload FILE as PATH and commit it")
    up.add_argument("file")
    up.add_argument("path")
    down = sub.add_parser("download", help="download PATH's current version to OUT")
    down.add_argument("path")
    down.add_argument("out")
    wait = sub.add_parser("wait-for", help="follow Changes until PATH is a file; download to OUT")
    wait.add_argument("path")
    wait.add_argument("out", nargs="?")
    wait.add_argument("--timeout", type=float, default=60.0)
    vec = sub.add_parser("check-vectors", help="check this chunker against PROTOCOL.md's vectors")
    vec.add_argument("--doc", default=os.path.join(REPO, "docs", "PROTOCOL.md"))
    args = ap.parse_args(argv)

    try:
        if args.cmd == "check-vectors":
            problems = check_vectors(args.doc)
            for p in problems:
                print(p, file=sys.stderr)
            print(f"vectors: {'ok' if not problems else f'{len(problems)} disagree'}")
            return 1 if problems else 0
        token = os.environ.get("LBSYNC_TOKEN")
        if args.token_file:
            token = open(args.token_file, encoding="utf-8").readline().strip()
        pb, rpc = load_stubs(args.proto)
        c = Client(pb, rpc, args.server, args.folder, args.device, token, args.ca_file)
        c.handshake()
        if args.cmd == "upload":
            e, sent, total = c.upload(args.file, args.path)
            print(f"committed {args.path} v{e.version} seq {e.seq}: {sent} of {total} chunks sent")
        elif args.cmd == "download":
            n = c.download(args.path, args.out)
            print(f"downloaded {args.path}: {n} bytes")
        elif args.cmd == "wait-for":
            t0 = time.monotonic()
            e = c.wait_for(args.path, args.timeout)
            print(f"{args.path} v{e.version} seen after {time.monotonic() - t0:.1f} s")
            if args.out:
                n = c.download_entry(e, args.out)
                print(f"downloaded {args.path}: {n} bytes")
        return 0
    except grpc.RpcError as e:
        print(f"lbsync_py: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except (ClientError, OSError) as e:
        print(f"lbsync_py: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
