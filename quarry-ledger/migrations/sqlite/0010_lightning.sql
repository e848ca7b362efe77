-- Lightning payouts. Kept in step between ../sqlite and ../postgres.
-- A miner's Lightning destination (a BOLT12 offer) for its Bitcoin address. `source` says how it
-- was set: `signed` (a message signed with the address's key, `signed_at` its timestamp: a
-- replacement must be signed later) or `authorize` (the first `ln=` password, trusted once).
CREATE TABLE payout_destinations (
    address TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    destination TEXT NOT NULL,
    source TEXT NOT NULL,
    signed_at BIGINT,
    updated_ms BIGINT NOT NULL
);
-- How a payout went: `onchain` (a transaction, txid) or `lightning` (one payment per miner, the
-- node's payment id in txid, the tag as its payer note). `fee_sat` is a Lightning payment's
-- routing fee. A Lightning payment that failed is `failed`: its amount is owed again.
ALTER TABLE payouts ADD COLUMN method TEXT NOT NULL DEFAULT 'onchain';
ALTER TABLE payouts ADD COLUMN fee_sat BIGINT;
