-- Chain history through reorganisations and changes of backend.
--
-- * A network's chain-derived state belongs to the backend that produced it: the
--   simulator, or a node of one chain (its chain id and genesis block). Scan cursors,
--   remembered blocks and nonces are keyed by that backend, and `chain_backends` says
--   which backend serves each network now.
-- * A reorganisation the deposit watcher finds is written down (`chain_reorgs`) in the
--   transaction that forgets the replaced blocks, and cleared only once everything
--   recorded above its block has been checked against the new chain.
-- * A token deposit is named by its transaction and the log's place among the
--   transaction's logs (`0x…:0`), which a reorganisation does not change; names given
--   before (the log's index in its block) are resolved against the chain once.
-- * A completed withdrawal through a node that a reorganisation removed is REORGED until
--   it is mined again, and then debited with what the chain charged that time (its first
--   debit reversed). A credit whose deposit is REORGED may be reversed, and a deposit
--   mined again after that is credited again, once.

-- Which backend serves each network: `simulator`, or `node:<chain id>:<genesis hash>`.
CREATE TABLE chain_backends (
    network    TEXT PRIMARY KEY,
    backend    TEXT NOT NULL CHECK (length(backend) BETWEEN 1 AND 200),
    claimed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- '' marks rows written before backends were recorded: the first backend shown to have
-- produced them adopts them; otherwise they are dropped (see src/chain/backends.rs).
ALTER TABLE chain_scan_cursors ADD COLUMN backend TEXT NOT NULL DEFAULT '';
ALTER TABLE chain_scan_cursors ALTER COLUMN backend DROP DEFAULT;
ALTER TABLE chain_scan_cursors DROP CONSTRAINT chain_scan_cursors_pkey;
ALTER TABLE chain_scan_cursors ADD PRIMARY KEY (network, backend);

ALTER TABLE chain_blocks ADD COLUMN backend TEXT NOT NULL DEFAULT '';
ALTER TABLE chain_blocks ALTER COLUMN backend DROP DEFAULT;
ALTER TABLE chain_blocks DROP CONSTRAINT chain_blocks_pkey;
ALTER TABLE chain_blocks ADD PRIMARY KEY (network, backend, number);

ALTER TABLE chain_nonces ADD COLUMN backend TEXT NOT NULL DEFAULT '';
ALTER TABLE chain_nonces ALTER COLUMN backend DROP DEFAULT;
ALTER TABLE chain_nonces DROP CONSTRAINT chain_nonces_pkey;
ALTER TABLE chain_nonces ADD PRIMARY KEY (network, backend, address);

-- Reorganisations being followed: blocks above `above` were replaced, and what was
-- recorded in them may be gone. Whoever checks everything recorded above it (any
-- process) deletes the row.
CREATE TABLE chain_reorgs (
    id          BIGSERIAL   PRIMARY KEY,
    network     TEXT        NOT NULL,
    backend     TEXT        NOT NULL,
    above       BIGINT      NOT NULL CHECK (above >= 0),
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX chain_reorgs_backend_idx ON chain_reorgs (network, backend, id);

-- Token deposits named by the log's index in its block, as before: their names now, once
-- resolved against the chain (a journal row's chain hash never changes).
CREATE TABLE legacy_token_deposits (
    hold_id BIGINT PRIMARY KEY REFERENCES transactions (id),
    network TEXT   NOT NULL,
    -- The transaction hash (the old name up to ':').
    tx_hash TEXT   NOT NULL,
    -- `<tx_hash>:<position of the log among the transaction's logs>`, once resolved.
    name    TEXT,
    UNIQUE (network, name)
);
CREATE INDEX legacy_token_deposits_tx_idx ON legacy_token_deposits (network, tx_hash);
INSERT INTO legacy_token_deposits (hold_id, network, tx_hash)
SELECT id, network, split_part(chain_tx_hash, ':', 1)
  FROM transactions
 WHERE hold AND type = 'DEPOSIT' AND network IS NOT NULL AND chain_tx_hash LIKE '%:%';

-- What the reorganisation check reads (completed withdrawals above a block) and what the
-- worker follows every pass (withdrawals a reorganisation removed).
CREATE INDEX transactions_completed_withdrawal_blocks_idx ON transactions (network, block_number)
    WHERE hold AND type = 'WITHDRAW' AND status = 'COMPLETED';
CREATE INDEX transactions_reorged_holds_idx ON transactions (network, id)
    WHERE hold AND status = 'REORGED';

-- A deposit credited again after its earlier credit was reversed (or a withdrawal debited
-- again): the posting names the reversal it makes good. One credit (debit) per hold, plus
-- at most one per reversal of its credits (debits): never two standing at once. A
-- reversal may settle a hold too (a withdrawal's first debit, reversed by the system when
-- the chain charged another fee the second time): each row is reversed at most once.
ALTER TABLE transactions ADD COLUMN restores_id BIGINT REFERENCES transactions (id);
DROP INDEX transactions_hold_postings_key;
CREATE UNIQUE INDEX transactions_hold_postings_key ON transactions (hold_id, type)
    WHERE hold_id IS NOT NULL AND restores_id IS NULL AND type <> 'REVERSAL';
CREATE UNIQUE INDEX transactions_restores_key ON transactions (restores_id)
    WHERE restores_id IS NOT NULL;

CREATE FUNCTION transactions_restore_credit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- The oldest reversal of this hold's credits (debits) not made good yet, if any.
    SELECT r.id INTO NEW.restores_id
      FROM transactions c
      JOIN transactions r ON r.reverses_id = c.id
     WHERE c.hold_id = NEW.hold_id AND c.type = NEW.type
       AND NOT EXISTS (SELECT 1 FROM transactions x WHERE x.restores_id = r.id)
     ORDER BY r.id
     LIMIT 1;
    RETURN NEW;
END $$;
CREATE TRIGGER transactions_restore_credit BEFORE INSERT ON transactions
    FOR EACH ROW WHEN (NEW.type IN ('DEPOSIT', 'WITHDRAW') AND NEW.hold_id IS NOT NULL)
    EXECUTE FUNCTION transactions_restore_credit();

-- Replaced: a chain movement's posting may be reversed while its hold is flagged REORGED
-- (a reorganisation took its transaction off the chain after it was credited or debited):
-- a deposit's credit by an operator, a withdrawal's debit by the worker when the chain
-- charged another fee the second time.
CREATE OR REPLACE FUNCTION transactions_check_reversal() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    original transactions;
    reorged_posting BOOLEAN;
BEGIN
    SELECT * INTO original FROM transactions WHERE id = NEW.reverses_id;
    reorged_posting := COALESCE(original.type IN ('DEPOSIT', 'WITHDRAW') AND NOT original.hold
        AND original.hold_id IS NOT NULL
        AND EXISTS (SELECT 1 FROM transactions h
                     WHERE h.id = original.hold_id AND h.hold AND h.type = original.type
                       AND h.status = 'REORGED'), FALSE);
    IF original.id IS NULL OR original.wallet_id <> NEW.wallet_id OR original.hold
       OR ((original.hold_id IS NOT NULL OR original.network IS NOT NULL) AND NOT reorged_posting)
       OR original.type NOT IN ('DEPOSIT', 'WITHDRAW', 'TRANSFER_OUT', 'TRANSFER_IN')
       OR original.amount <> NEW.amount OR original.fee <> NEW.fee
       OR NEW.balance_after - NEW.balance_before <> original.balance_before - original.balance_after THEN
        RAISE EXCEPTION 'journal row % does not reverse journal row %', NEW.id, NEW.reverses_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

-- Replaced: a withdrawal sent through a node follows a reorganisation deeper than its
-- confirmations like a deposit does (COMPLETED -> REORGED -> COMPLETED when mined again,
-- or FAILED if it reverts that time).
CREATE OR REPLACE FUNCTION transactions_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    -- What a hold's progress may change. Everything else is fixed at insert.
    progress CONSTANT text[] := ARRAY['status', 'status_reason', 'confirmations',
                                      'block_number', 'updated_at', 'chain_tx_hash', 'raw'];
BEGIN
    IF TG_OP = 'DELETE' OR TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION 'the journal is append-only: % on transactions is not allowed', TG_OP
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF NOT OLD.hold THEN
        RAISE EXCEPTION 'the journal is append-only: journal row % is final', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    -- jsonb keeps a numeric's scale in its text form: the comparison is exact.
    IF (to_jsonb(NEW) - progress)::text IS DISTINCT FROM (to_jsonb(OLD) - progress)::text THEN
        RAISE EXCEPTION 'the journal is append-only: journal row % cannot be rewritten', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    -- A withdrawal sent through a node may be replaced (same nonce, higher fee): its
    -- hold then names the newest attempt, which must be one recorded for it.
    IF ((OLD.chain_tx_hash IS NOT NULL AND NEW.chain_tx_hash IS DISTINCT FROM OLD.chain_tx_hash)
        OR (OLD.raw IS NOT NULL AND NEW.raw IS DISTINCT FROM OLD.raw))
    AND NOT EXISTS (SELECT 1 FROM withdrawal_attempts a
                     WHERE a.transaction_id = OLD.id
                       AND a.hash = NEW.chain_tx_hash
                       AND a.raw = NEW.raw) THEN
        RAISE EXCEPTION 'the journal is append-only: the chain transaction of journal row % is already recorded', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status AND (OLD.status, NEW.status) NOT IN (
        ('PENDING', 'PROCESSING'), ('PENDING', 'COMPLETED'), ('PENDING', 'FAILED'),
        ('PENDING', 'PARKED'), ('PROCESSING', 'COMPLETED'), ('PROCESSING', 'FAILED'),
        ('PARKED', 'COMPLETED'), ('PARKED', 'FAILED'))
    -- A chain deposit follows the chain through reorganisations: dropped while its
    -- transaction is gone, held again when it is mined again; a credited one flagged when
    -- a reorganisation removes it, and unflagged if it is mined again.
    AND NOT (OLD.type = 'DEPOSIT' AND (OLD.status, NEW.status) IN (
        ('PENDING', 'DROPPED'), ('DROPPED', 'PENDING'), ('DROPPED', 'COMPLETED'),
        ('DROPPED', 'FAILED'), ('DROPPED', 'PARKED'),
        ('COMPLETED', 'REORGED'), ('REORGED', 'COMPLETED')))
    -- A completed withdrawal sent through a node (it has signed attempts) is flagged when
    -- a reorganisation removes it, and unflagged once it is mined again.
    AND NOT (OLD.type = 'WITHDRAW' AND (OLD.status, NEW.status) IN (
        ('COMPLETED', 'REORGED'), ('REORGED', 'COMPLETED'), ('REORGED', 'FAILED'))
        AND EXISTS (SELECT 1 FROM withdrawal_attempts a WHERE a.transaction_id = OLD.id)) THEN
        RAISE EXCEPTION 'the journal is append-only: journal row % cannot move from % to %',
            OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'restrict_violation';
    END IF;
    -- A reason explains a status: it changes only with one.
    IF NEW.status_reason IS DISTINCT FROM OLD.status_reason AND NEW.status = OLD.status THEN
        RAISE EXCEPTION 'the journal is append-only: the reason of journal row % changes only with its status', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END;
$$;
