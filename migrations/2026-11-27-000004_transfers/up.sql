-- Transfers between wallets: a TRANSFER_OUT row on the source and a TRANSFER_IN row on the
-- target, written in one database transaction. The pair is the entry (it sums to zero by
-- itself): transfer rows have no postings to system accounts.
ALTER TABLE transactions DROP CONSTRAINT transactions_type_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_type_check
    CHECK (type IN ('DEPOSIT', 'WITHDRAW', 'REFUND', 'TRANSFER_OUT', 'TRANSFER_IN'));

ALTER TABLE transactions DROP CONSTRAINT transactions_balance_arithmetic;
ALTER TABLE transactions ADD CONSTRAINT transactions_balance_arithmetic CHECK (
    COALESCE(balance_after = balance_before + CASE
        WHEN hold THEN 0
        WHEN type IN ('DEPOSIT', 'REFUND', 'TRANSFER_IN') THEN amount + fee
        WHEN type IN ('WITHDRAW', 'TRANSFER_OUT') THEN -(amount + fee)
    END, FALSE)
);

-- The receiving side names the sending side (written second, so it can).
ALTER TABLE transactions ADD COLUMN counterpart_id BIGINT REFERENCES transactions (id);
ALTER TABLE transactions ADD CONSTRAINT transactions_transfer_pair
    CHECK ((type = 'TRANSFER_IN') = (counterpart_id IS NOT NULL));
CREATE UNIQUE INDEX transactions_counterpart_key ON transactions (counterpart_id)
    WHERE counterpart_id IS NOT NULL;

-- The transfer's key belongs to the source wallet; the receiving row repeats it for
-- display but is not keyed by it on the target (whose own keys it must not collide with).
DROP INDEX transactions_tx_hash_key;
CREATE UNIQUE INDEX transactions_tx_hash_key ON transactions (wallet_id, tx_hash)
    WHERE hold_id IS NULL AND NOT (hold AND type = 'DEPOSIT') AND type <> 'TRANSFER_IN';
