-- Money owed, per address, in millisatoshis. A block's credits are written 'immature' when the
-- block is found, become 'mature' at coinbase maturity and 'reversed' if it is orphaned.
CREATE TABLE credits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    block_hash TEXT,
    address TEXT NOT NULL,
    amount_msat BIGINT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX credits_by_block ON credits (block_hash);
CREATE INDEX credits_by_address ON credits (address, status);
