-- Why every node refused a found block (submitblock's answer, e.g. "bad-cb-amount"), so an
-- operator sees Bitcoin Core's reason next to the block. NULL for blocks no node refused.
ALTER TABLE blocks ADD COLUMN reject_reason TEXT;
