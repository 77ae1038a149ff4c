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
ALTER TABLE transactions DROP CONSTRAINT transactions_balance_arithmetic;
ALTER TABLE transactions DROP CONSTRAINT transactions_posting_is_final;
ALTER TABLE transactions DROP CONSTRAINT transactions_status_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_status_check
    CHECK (status IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED'));
ALTER TABLE transactions DROP COLUMN status_reason;
