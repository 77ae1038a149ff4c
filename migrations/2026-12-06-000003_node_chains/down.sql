DROP INDEX transactions_dropped_deposits_idx;
DROP INDEX transactions_credited_deposit_blocks_idx;
UPDATE transactions SET status = 'PENDING' WHERE status = 'DROPPED';
UPDATE transactions SET status = 'COMPLETED' WHERE status = 'REORGED';
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
    IF (OLD.chain_tx_hash IS NOT NULL AND NEW.chain_tx_hash IS DISTINCT FROM OLD.chain_tx_hash)
    OR (OLD.raw IS NOT NULL AND NEW.raw IS DISTINCT FROM OLD.raw) THEN
        RAISE EXCEPTION 'the journal is append-only: the chain transaction of journal row % is already recorded', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status AND (OLD.status, NEW.status) NOT IN (
        ('PENDING', 'PROCESSING'), ('PENDING', 'COMPLETED'), ('PENDING', 'FAILED'),
        ('PENDING', 'PARKED'), ('PROCESSING', 'COMPLETED'), ('PROCESSING', 'FAILED'),
        ('PARKED', 'COMPLETED'), ('PARKED', 'FAILED')) THEN
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

ALTER TABLE transactions DROP CONSTRAINT transactions_status_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_status_check
    CHECK (status IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED', 'PARKED'));
DROP TABLE withdrawal_attempts;
DROP FUNCTION withdrawal_attempts_append_only();
DROP TABLE chain_nonces;
