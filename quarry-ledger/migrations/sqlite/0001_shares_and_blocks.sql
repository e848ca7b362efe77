-- Durable share log and found blocks. Kept in step with ../postgres/0001_shares_and_blocks.sql:
-- same tables, columns and meaning; only identity syntax differs.
CREATE TABLE shares (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_ms BIGINT NOT NULL,
    address TEXT NOT NULL,
    worker TEXT NOT NULL,
    difficulty DOUBLE PRECISION NOT NULL,
    network_difficulty DOUBLE PRECISION NOT NULL,
    block_reward BIGINT NOT NULL,
    height BIGINT NOT NULL,
    template_id BIGINT NOT NULL,
    is_block BIGINT NOT NULL, -- 0 or 1: portable across both backends
    instance TEXT NOT NULL
);
-- Append-only indexes only: an (address, …) index would dirty a leaf page per miner on every
-- commit (SQLite ingest fell from 90k to 27k shares/s at 400k rows). Per-miner statistics come
-- from time-window scans and aggregates instead.
CREATE INDEX shares_by_time ON shares (created_ms);

CREATE TABLE blocks (
    hash TEXT PRIMARY KEY,
    height BIGINT NOT NULL,
    status TEXT NOT NULL,
    reward BIGINT NOT NULL,
    worker TEXT NOT NULL,
    address TEXT NOT NULL,
    found_ms BIGINT NOT NULL,
    share_id BIGINT,
    network_difficulty DOUBLE PRECISION NOT NULL,
    instance TEXT NOT NULL
);
CREATE INDEX blocks_by_height ON blocks (height);

-- Spool files already written to the database, so that a crash between the commit and the
-- file's deletion cannot insert its shares twice.
CREATE TABLE spool_replays (
    name TEXT PRIMARY KEY,
    shares BIGINT NOT NULL
);
