-- The chunk index of a store whose packs are objects on an S3-compatible store (pg::PgChunkIndex):
-- where each chunk's record is, and when it was recorded (gc's grace period). Keyed by a
-- uniformly random hash: it shards by id prefix.
CREATE TABLE chunks (
    id bytea PRIMARY KEY,
    pack bytea NOT NULL,
    pack_offset bigint NOT NULL,
    stored_len bigint NOT NULL,
    raw_len bigint NOT NULL,
    inserted_ms bigint NOT NULL
);
