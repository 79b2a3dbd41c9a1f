-- lbsync's metadata in PostgreSQL: see server/src/pg/mod.rs for what each table holds and how a
-- commit uses them. Paths, names and ids sort as bytes (COLLATE "C"), as in the sled backend.

-- One row a folder: its journal head (the last seq handed out), its expiry horizon and, for an
-- end-to-end encrypted folder only, its wrapped keys (an encoded lbsync.v1.FolderKeys; NULL:
-- plain). A commit locks its folder's row, which orders every folder's commits.
CREATE TABLE folders (
    name text COLLATE "C" PRIMARY KEY,
    head bigint NOT NULL DEFAULT 0,
    expired_seq bigint NOT NULL DEFAULT 0,
    keys bytea
);

-- A path's current entry (an encoded lbsync.v1.Entry), with the columns queries need. It is the
-- journal too: a path's only journal record is its latest commit, found by (folder, seq).
CREATE TABLE entries (
    folder text COLLATE "C" NOT NULL REFERENCES folders (name),
    path text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    version bigint NOT NULL,
    deleted boolean NOT NULL,
    committed_ns bigint NOT NULL,
    entry bytea NOT NULL,
    PRIMARY KEY (folder, path)
);
CREATE UNIQUE INDEX entries_journal ON entries (folder, seq);

-- Every retained version of every path.
CREATE TABLE history (
    folder text COLLATE "C" NOT NULL REFERENCES folders (name),
    path text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    committed_ns bigint NOT NULL,
    entry bytea NOT NULL,
    PRIMARY KEY (folder, path, version)
);

CREATE TABLE users (
    name text COLLATE "C" PRIMARY KEY,
    created_ns bigint NOT NULL
);

-- A token's BLAKE3 hash of its secret, never the secret.
CREATE TABLE tokens (
    id text COLLATE "C" PRIMARY KEY,
    hash bytea NOT NULL,
    user_name text COLLATE "C" NOT NULL,
    read_only boolean NOT NULL,
    folder text COLLATE "C",
    created_ns bigint NOT NULL
);

CREATE TABLE owners (
    folder text COLLATE "C" PRIMARY KEY,
    user_name text COLLATE "C" NOT NULL
);

CREATE TABLE members (
    folder text COLLATE "C" NOT NULL,
    user_name text COLLATE "C" NOT NULL,
    read_only boolean NOT NULL,
    PRIMARY KEY (folder, user_name)
);
CREATE INDEX members_by_user ON members (user_name);

-- Dedup scopes: kind 0 a chunk id, 1 a manifest id.
CREATE TABLE scopes (
    folder text COLLATE "C" NOT NULL,
    kind smallint NOT NULL,
    id bytea NOT NULL,
    PRIMARY KEY (folder, kind, id)
);
