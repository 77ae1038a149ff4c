-- Crypto movements that take time on chain: hold, then post.
--
-- A chain deposit is a Transaction from the moment it is seen (PENDING, confirmations
-- counting), and a crypto withdrawal from the moment it is requested, yet a journal
-- row's balances never change. So such a movement is journaled as a *hold*:
-- a row with no balance effect (balance_before = balance_after) whose status and chain
-- fields move on. What it does to the balance is appended as *postings* that point at
-- the hold: the credit of a deposit at its confirmation threshold; the debit of a
-- withdrawal when it is signed; a refund if the chain then fails it. The chain of
-- balances stays exact, and every balance change is a row of its own.

ALTER TABLE transactions
    ADD COLUMN hold BOOLEAN NOT NULL DEFAULT FALSE,
    -- On postings: the hold they settle.
    ADD COLUMN hold_id BIGINT REFERENCES transactions (id),
    -- The chain transfer's hash (a deposit's is also its key; a withdrawal's key is
    -- the client's idempotencyKey and its hash is known once it is signed).
    ADD COLUMN chain_tx_hash TEXT,
    ADD CONSTRAINT transactions_hold_has_no_effect
        CHECK (NOT hold OR balance_before = balance_after),
    ADD CONSTRAINT transactions_posting_is_not_a_hold
        CHECK (hold_id IS NULL OR NOT hold);

-- Crypto rows written before holds existed were posted directly; their hash is their key.
UPDATE transactions SET chain_tx_hash = tx_hash WHERE network IS NOT NULL;

-- Clients' keys are unique among movements; postings repeat their hold's key, and a hold
-- has at most one posting of each type (one credit; one debit and at most one refund).
-- A chain deposit is keyed by its network and hash, apart from clients' keys: nobody can
-- block a deposit by using its hash (public in the mempool) as a key first.
ALTER TABLE transactions DROP CONSTRAINT transactions_tx_hash_key;
CREATE UNIQUE INDEX transactions_tx_hash_key ON transactions (tx_hash)
    WHERE hold_id IS NULL AND NOT (hold AND type = 'DEPOSIT');
CREATE UNIQUE INDEX transactions_chain_deposit_key ON transactions (network, chain_tx_hash)
    WHERE hold AND type = 'DEPOSIT';
CREATE UNIQUE INDEX transactions_hold_postings_key ON transactions (hold_id, type)
    WHERE hold_id IS NOT NULL;
CREATE INDEX transactions_chain_tx_hash_idx ON transactions (network, chain_tx_hash)
    WHERE chain_tx_hash IS NOT NULL;
-- Holds still in flight, for the deposit watcher and the withdrawal worker.
CREATE INDEX transactions_open_holds_idx ON transactions (type, status, id)
    WHERE hold AND status IN ('PENDING', 'PROCESSING');

-- Whether a row is a hold, and what it settles, never change either.
CREATE OR REPLACE FUNCTION transactions_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION 'the journal is append-only: % on transactions is not allowed', TG_OP
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF NEW.wallet_id      IS DISTINCT FROM OLD.wallet_id
    OR NEW.type           IS DISTINCT FROM OLD.type
    OR NEW.amount         IS DISTINCT FROM OLD.amount
    OR NEW.balance_before IS DISTINCT FROM OLD.balance_before
    OR NEW.balance_after  IS DISTINCT FROM OLD.balance_after
    OR NEW.tx_hash        IS DISTINCT FROM OLD.tx_hash
    OR NEW.created_at     IS DISTINCT FROM OLD.created_at
    OR NEW.hold           IS DISTINCT FROM OLD.hold
    OR NEW.hold_id        IS DISTINCT FROM OLD.hold_id THEN
        RAISE EXCEPTION 'the journal is append-only: journal row % cannot be rewritten', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END;
$$;

-- How far the deposit watcher has scanned each network.
CREATE TABLE chain_scan_cursors (
    network TEXT PRIMARY KEY,
    block   BIGINT NOT NULL DEFAULT 0 CHECK (block >= 0)
);
INSERT INTO chain_scan_cursors (network)
    SELECT network FROM currencies WHERE network IS NOT NULL;
