-- Payouts in the coinbase (scheme coinbase-pplns). Kept in step between ../sqlite and ../postgres.
-- Each share's header hash (display hex), published with the PPLNS window so that anyone can
-- check the shares behind a block's split. NULL for shares logged before.
ALTER TABLE shares ADD COLUMN hash TEXT;
-- The payout table a found block's coinbase committed to (JSON: window, fee policy, limits and
-- per address what it earned, what balance the block paid it and its output). The block credits
-- exactly this table; its outputs are a payout (tag coinbase-<block hash>, txid the coinbase's)
-- whose status is 'coinbase' until the block matures ('sent') or leaves the chain ('void').
CREATE TABLE coinbase_tables (
    block_hash TEXT PRIMARY KEY,
    chain TEXT NOT NULL,
    coinbase_txid TEXT NOT NULL,
    table_json TEXT NOT NULL
);
