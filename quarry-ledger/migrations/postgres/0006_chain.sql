-- The chain every row belongs to, so that one ledger serves Bitcoin, merged-mined aux chains and
-- Kaspa without mixing their amounts or difficulties. Rows written before are Bitcoin's.
ALTER TABLE shares ADD COLUMN chain TEXT NOT NULL DEFAULT 'bitcoin';
ALTER TABLE blocks ADD COLUMN chain TEXT NOT NULL DEFAULT 'bitcoin';
ALTER TABLE credits ADD COLUMN chain TEXT NOT NULL DEFAULT 'bitcoin';
ALTER TABLE payouts ADD COLUMN chain TEXT NOT NULL DEFAULT 'bitcoin';
ALTER TABLE payout_items ADD COLUMN chain TEXT NOT NULL DEFAULT 'bitcoin';
-- Balances and payable amounts are read per chain and address.
CREATE INDEX credits_by_chain_address ON credits (chain, address, status);
