-- The database protects the journal by itself, whatever client writes to it.
--
-- * A row's balance arithmetic is a constraint: a hold moves nothing, a credit (DEPOSIT,
--   REFUND) adds amount + fee, a debit (WITHDRAW) subtracts amount + fee.
-- * Only holds (crypto movements on their way) ever change, and only in their progress
--   columns; every other column of every row is fixed at insert, compared exactly (as
--   text, so 10.00 -> 10.0000 is a change too). A column added later is fixed unless it
--   is added to the list below.
-- * A hold's status only moves forward: PENDING -> PROCESSING -> COMPLETED | FAILED,
--   PENDING -> COMPLETED | FAILED | PARKED, PARKED -> COMPLETED | FAILED. Nothing goes back
--   to PENDING and nothing leaves COMPLETED or FAILED.
-- * A chain hash and signed bytes, once written, never change.

-- Why a hold was parked or failed, for people to read.
ALTER TABLE transactions ADD COLUMN status_reason TEXT
    CHECK (length(status_reason) BETWEEN 1 AND 1000);

-- PARKED: a chain deposit that cannot be credited as it is (say, finer than the
-- currency's scale); it waits for an operator instead of blocking the watcher.
ALTER TABLE transactions DROP CONSTRAINT transactions_status_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_status_check
    CHECK (status IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED', 'PARKED'));

-- Everything but a hold is final the moment it is written.
ALTER TABLE transactions ADD CONSTRAINT transactions_posting_is_final
    CHECK (hold OR status = 'COMPLETED');

ALTER TABLE transactions ADD CONSTRAINT transactions_balance_arithmetic CHECK (
    COALESCE(balance_after = balance_before + CASE
        WHEN hold THEN 0
        WHEN type IN ('DEPOSIT', 'REFUND') THEN amount + fee
        WHEN type = 'WITHDRAW' THEN -(amount + fee)
    END, FALSE)
);

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
