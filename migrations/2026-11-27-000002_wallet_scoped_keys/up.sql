-- Clients' idempotency keys are scoped to the wallet a movement is recorded on: nobody
-- learns whether another user's wallet used a key (a conflict on a key would say so), and
-- nobody can take a predictable key (a bank reference) before the back office's deposit
-- to someone else. Chain deposits stay keyed by network and hash.
DROP INDEX transactions_tx_hash_key;
CREATE UNIQUE INDEX transactions_tx_hash_key ON transactions (wallet_id, tx_hash)
    WHERE hold_id IS NULL AND NOT (hold AND type = 'DEPOSIT');
