-- Payouts are idempotent: the intent (tag, items) is committed before the wallet is asked to
-- send, the tag travels in the wallet transaction's comment, and a crashed run is reconciled
-- from the wallet by that tag instead of being sent again.
CREATE TABLE payouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tag TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    txid TEXT,
    created_ms BIGINT NOT NULL,
    sent_ms BIGINT,
    error TEXT
);
-- amount_sat is debited from the balance when the intent is written; received_sat is what the
-- recipient got on chain (the transaction fee is shared by the recipients).
CREATE TABLE payout_items (
    payout_id BIGINT NOT NULL,
    address TEXT NOT NULL,
    amount_sat BIGINT NOT NULL,
    received_sat BIGINT,
    PRIMARY KEY (payout_id, address)
);
