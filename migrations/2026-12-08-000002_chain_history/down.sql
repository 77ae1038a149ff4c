-- Back to one history per network: the rows of the backend serving it now are kept.
UPDATE transactions SET status = 'COMPLETED' WHERE status = 'REORGED' AND type = 'WITHDRAW';
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
        ('COMPLETED', 'REORGED'), ('REORGED', 'COMPLETED'))) THEN
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

CREATE OR REPLACE FUNCTION transactions_check_reversal() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    original transactions;
BEGIN
    SELECT * INTO original FROM transactions WHERE id = NEW.reverses_id;
    IF original.id IS NULL OR original.wallet_id <> NEW.wallet_id OR original.hold
       OR original.hold_id IS NOT NULL OR original.network IS NOT NULL
       OR original.type NOT IN ('DEPOSIT', 'WITHDRAW', 'TRANSFER_OUT', 'TRANSFER_IN')
       OR original.amount <> NEW.amount OR original.fee <> NEW.fee
       OR NEW.balance_after - NEW.balance_before <> original.balance_before - original.balance_after THEN
        RAISE EXCEPTION 'journal row % does not reverse journal row %', NEW.id, NEW.reverses_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER transactions_restore_credit ON transactions;
DROP FUNCTION transactions_restore_credit();
DROP INDEX transactions_restores_key;
DROP INDEX transactions_hold_postings_key;
CREATE UNIQUE INDEX transactions_hold_postings_key ON transactions (hold_id, type)
    WHERE hold_id IS NOT NULL;
ALTER TABLE transactions DROP COLUMN restores_id;
DROP INDEX transactions_reorged_holds_idx;
DROP INDEX transactions_completed_withdrawal_blocks_idx;
DROP TABLE legacy_token_deposits;
DROP TABLE chain_reorgs;

DELETE FROM chain_nonces n WHERE NOT EXISTS
    (SELECT 1 FROM chain_backends b WHERE b.network = n.network AND b.backend = n.backend);
ALTER TABLE chain_nonces DROP CONSTRAINT chain_nonces_pkey;
ALTER TABLE chain_nonces DROP COLUMN backend;
ALTER TABLE chain_nonces ADD PRIMARY KEY (network, address);

DELETE FROM chain_blocks n WHERE NOT EXISTS
    (SELECT 1 FROM chain_backends b WHERE b.network = n.network AND b.backend = n.backend);
ALTER TABLE chain_blocks DROP CONSTRAINT chain_blocks_pkey;
ALTER TABLE chain_blocks DROP COLUMN backend;
ALTER TABLE chain_blocks ADD PRIMARY KEY (network, number);

DELETE FROM chain_scan_cursors n WHERE NOT EXISTS
    (SELECT 1 FROM chain_backends b WHERE b.network = n.network AND b.backend = n.backend);
ALTER TABLE chain_scan_cursors DROP CONSTRAINT chain_scan_cursors_pkey;
ALTER TABLE chain_scan_cursors DROP COLUMN backend;
ALTER TABLE chain_scan_cursors ADD PRIMARY KEY (network);
INSERT INTO chain_scan_cursors (network)
    SELECT DISTINCT network FROM currencies WHERE network IS NOT NULL
    ON CONFLICT DO NOTHING;

DROP TABLE chain_backends;
