DROP TABLE chain_scan_cursors;
DROP INDEX transactions_open_holds_idx;
DROP INDEX transactions_chain_tx_hash_idx;
DROP INDEX transactions_hold_postings_key;
DROP INDEX transactions_chain_deposit_key;
DROP INDEX transactions_tx_hash_key;
ALTER TABLE transactions ADD CONSTRAINT transactions_tx_hash_key UNIQUE (tx_hash);
ALTER TABLE transactions
    DROP CONSTRAINT transactions_posting_is_not_a_hold,
    DROP CONSTRAINT transactions_hold_has_no_effect,
    DROP COLUMN chain_tx_hash,
    DROP COLUMN hold_id,
    DROP COLUMN hold;
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
    OR NEW.created_at     IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'the journal is append-only: journal row % cannot be rewritten', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END;
$$;
