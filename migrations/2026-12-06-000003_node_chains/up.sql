-- Withdrawals sent through a real node (account-based networks: ethereum).
--
-- Each sending address orders its transactions by nonce. A withdrawal takes the next nonce
-- of its address when it is signed, in the transaction that stores the signed bytes, so a
-- crash and retry sends the same bytes and two withdrawals never share a nonce.
CREATE TABLE chain_nonces (
    network    TEXT   NOT NULL,
    address    TEXT   NOT NULL,
    next_nonce BIGINT NOT NULL CHECK (next_nonce >= 0),
    PRIMARY KEY (network, address)
);

-- Every signed transaction of a withdrawal: the first, and each replacement with the same
-- nonce and a higher fee (a fee bump) when it was not mined in time. Whichever of them the
-- chain includes is the withdrawal's; the others can never be mined (same nonce).
CREATE TABLE withdrawal_attempts (
    id                       BIGSERIAL   PRIMARY KEY,
    transaction_id           BIGINT      NOT NULL REFERENCES transactions (id),
    network                  TEXT        NOT NULL,
    from_address             TEXT        NOT NULL,
    nonce                    BIGINT      NOT NULL CHECK (nonce >= 0),
    -- The attempt this one replaces (NULL for the first).
    replaces                 BIGINT      REFERENCES withdrawal_attempts (id),
    hash                     TEXT        NOT NULL,
    raw                      TEXT        NOT NULL,
    -- In wei per gas.
    max_fee_per_gas          NUMERIC(78, 0) NOT NULL CHECK (max_fee_per_gas > 0),
    max_priority_fee_per_gas NUMERIC(78, 0) NOT NULL CHECK (max_priority_fee_per_gas >= 0),
    gas_limit                BIGINT      NOT NULL CHECK (gas_limit > 0),
    -- What the wallet has locked for this attempt's fee (gas limit x max fee, in the
    -- wallet's currency), when the user pays the network's fee; 0 otherwise.
    locked_fee               NUMERIC     NOT NULL CHECK (locked_fee >= 0),
    -- The chain's height when it was signed: a replacement is due some blocks later.
    signed_at_height         BIGINT      NOT NULL,
    created_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (network, hash)
);
CREATE INDEX withdrawal_attempts_transaction_idx ON withdrawal_attempts (transaction_id, id);
-- One nonce, one withdrawal: replacements reuse their first attempt's nonce.
CREATE UNIQUE INDEX withdrawal_attempts_nonce_key ON withdrawal_attempts (network, from_address, nonce)
    WHERE replaces IS NULL;

CREATE FUNCTION withdrawal_attempts_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'withdrawal attempts are append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER withdrawal_attempts_no_rewrite BEFORE UPDATE OR DELETE ON withdrawal_attempts
    FOR EACH ROW EXECUTE FUNCTION withdrawal_attempts_append_only();
CREATE TRIGGER withdrawal_attempts_no_truncate BEFORE TRUNCATE ON withdrawal_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION withdrawal_attempts_append_only();

-- Chain deposits through reorganisations of a real chain.
--
-- DROPPED: a held deposit whose transaction left the chain in a reorganisation and is no
-- longer known to the node either; nothing was credited. It is held again (and credited
-- once) if the transaction is mined again.
-- REORGED: a credited deposit whose transaction a reorganisation deeper than the
-- confirmation threshold removed. The credit stands — it is neither kept silently nor
-- reversed silently: the flag, its reason, a metric and reconciliation show it to an
-- operator, who may reverse it. Mined again, the flag is lifted.

-- What the deposit watcher looks at every pass (dropped deposits, in case they are mined
-- again) and after a reorganisation (credited deposits above the block both chains share).
CREATE INDEX transactions_dropped_deposits_idx ON transactions (network, id)
    WHERE hold AND status = 'DROPPED';
CREATE INDEX transactions_credited_deposit_blocks_idx ON transactions (network, block_number)
    WHERE hold AND type = 'DEPOSIT' AND status = 'COMPLETED';

ALTER TABLE transactions DROP CONSTRAINT transactions_status_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_status_check
    CHECK (status IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED', 'PARKED', 'DROPPED',
                      'REORGED'));

-- The journal guard: a replaced withdrawal names a recorded attempt; a chain deposit
-- follows reorganisations.
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
