DROP INDEX transactions_tx_hash_key;
CREATE UNIQUE INDEX transactions_tx_hash_key ON transactions (tx_hash)
    WHERE hold_id IS NULL AND NOT (hold AND type = 'DEPOSIT');
