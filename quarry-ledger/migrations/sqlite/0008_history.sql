-- Hashrate history for the dashboard and /api/.../history: accepted difficulty in time buckets
-- per worker, and pool-wide on the row whose address and worker are ''. Minute buckets
-- (resolution_s = 60) are rolled up into hour buckets (3600) once their hour has closed, then
-- pruned; hour buckets are pruned after a year. Derived data: the share log stays the record.
-- Kept in step between ../sqlite and ../postgres.
CREATE TABLE history_buckets (
    chain TEXT NOT NULL,
    resolution_s BIGINT NOT NULL,
    bucket_ms BIGINT NOT NULL,
    address TEXT NOT NULL,
    worker TEXT NOT NULL,
    difficulty DOUBLE PRECISION NOT NULL,
    shares BIGINT NOT NULL,
    rejected BIGINT NOT NULL,
    PRIMARY KEY (chain, resolution_s, address, worker, bucket_ms)
);
-- Roll-up and pruning scan by time.
CREATE INDEX history_buckets_by_time ON history_buckets (resolution_s, bucket_ms);

-- Where the roll-up stands: every minute bucket before rolled_until_ms is in its hour bucket.
CREATE TABLE history_rollup (
    id BIGINT PRIMARY KEY,
    rolled_until_ms BIGINT NOT NULL
);
INSERT INTO history_rollup (id, rolled_until_ms) VALUES (1, 0);

-- Per worker (and pool-wide on address = worker = ''): best share difficulty all-time and since
-- the chain's last block, the last share, the difficulty it was sent.
CREATE TABLE worker_summary (
    chain TEXT NOT NULL,
    address TEXT NOT NULL,
    worker TEXT NOT NULL,
    best_difficulty DOUBLE PRECISION NOT NULL,
    round_best_difficulty DOUBLE PRECISION NOT NULL,
    last_share_ms BIGINT NOT NULL,
    last_difficulty DOUBLE PRECISION NOT NULL,
    shares BIGINT NOT NULL,
    rejected BIGINT NOT NULL,
    PRIMARY KEY (chain, address, worker)
);

-- Rejected shares per worker and reason (stale, duplicate, low_difficulty, ...).
CREATE TABLE worker_rejects (
    chain TEXT NOT NULL,
    address TEXT NOT NULL,
    worker TEXT NOT NULL,
    reason TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (chain, address, worker, reason)
);
