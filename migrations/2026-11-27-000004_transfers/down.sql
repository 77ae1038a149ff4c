DROP INDEX transactions_tx_hash_key;
CREATE UNIQUE INDEX transactions_tx_hash_key ON transactions (wallet_id, tx_hash)
    WHERE hold_id IS NULL AND NOT (hold AND type = 'DEPOSIT');
DROP INDEX transactions_counterpart_key;
ALTER TABLE transactions DROP CONSTRAINT transactions_transfer_pair;
ALTER TABLE transactions DROP COLUMN counterpart_id;
ALTER TABLE transactions DROP CONSTRAINT transactions_balance_arithmetic;
ALTER TABLE transactions ADD CONSTRAINT transactions_balance_arithmetic CHECK (
    COALESCE(balance_after = balance_before + CASE
        WHEN hold THEN 0
        WHEN type IN ('DEPOSIT', 'REFUND') THEN amount + fee
        WHEN type = 'WITHDRAW' THEN -(amount + fee)
    END, FALSE)
);
ALTER TABLE transactions DROP CONSTRAINT transactions_type_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_type_check
    CHECK (type IN ('DEPOSIT', 'WITHDRAW', 'REFUND'));
