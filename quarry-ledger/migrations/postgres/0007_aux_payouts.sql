-- Where a share's merge-mined rewards go: a JSON object of chain -> address, named by the worker
-- (`<chain>=<address>` in its password). NULL when it named none: aux credits then go to the
-- share's own address.
ALTER TABLE shares ADD COLUMN aux_payouts TEXT;
