-- Holds (money reserved now, settled later) and credit limits (fiat wallets allowed below
-- zero), enforced together with every other debit.
--
-- A wallet's available balance is `balance + credit_limit - locked_balance - held_balance`:
--   locked_balance  reserved by crypto withdrawals in flight;
--   held_balance    reserved by ACTIVE holds: the sum of their `amount - captured`;
--   credit_limit    how far below zero an operator lets a fiat balance go.
-- The rule the database enforces (trigger `wallets_within_credit`): a change that lowers
-- what the wallet itself has (`balance - locked - held`) must leave the available balance
-- at zero or above. Lowering the credit limit is not such a change: an operator may set it
-- below what is already used, and then every new debit is refused until the balance
-- recovers, while captures of holds already made still settle (they lower the balance and
-- the held balance together, so what the wallet has does not change).

ALTER TABLE wallets
    ADD COLUMN credit_limit NUMERIC NOT NULL DEFAULT 0 CHECK (credit_limit >= 0),
    ADD COLUMN held_balance NUMERIC NOT NULL DEFAULT 0 CHECK (held_balance >= 0),
    -- Holds and credit are fiat-only: a crypto balance is what our addresses hold.
    ADD CONSTRAINT wallets_crypto_without_credit
        CHECK (network IS NULL OR (credit_limit = 0 AND held_balance = 0));

-- The crypto rules stay static CHECKs; fiat balances may be negative (within the limit).
ALTER TABLE wallets DROP CONSTRAINT wallets_balance_check;
ALTER TABLE wallets DROP CONSTRAINT wallets_check;
ALTER TABLE wallets ADD CONSTRAINT wallets_crypto_within_balance
    CHECK (network IS NULL OR (balance >= 0 AND locked_balance <= balance));

CREATE FUNCTION wallets_refuse_overdraft() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'wallet % would have % available (balance %, credit limit %, locked %, held %)',
        NEW.id, NEW.balance + NEW.credit_limit - NEW.locked_balance - NEW.held_balance,
        NEW.balance, NEW.credit_limit, NEW.locked_balance, NEW.held_balance
        USING ERRCODE = 'check_violation', CONSTRAINT = 'wallets_within_credit';
END $$;

-- The condition is evaluated without calling the function; it runs only to refuse.
CREATE TRIGGER wallets_within_credit BEFORE UPDATE ON wallets
    FOR EACH ROW
    WHEN (NEW.balance + NEW.credit_limit - NEW.locked_balance - NEW.held_balance < 0
          AND NEW.balance - NEW.locked_balance - NEW.held_balance
              < OLD.balance - OLD.locked_balance - OLD.held_balance)
    EXECUTE FUNCTION wallets_refuse_overdraft();

-- Journal rows of fiat wallets may show negative balances now.
ALTER TABLE transactions DROP CONSTRAINT transactions_balance_before_check;
ALTER TABLE transactions DROP CONSTRAINT transactions_balance_after_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_crypto_balances
    CHECK (network IS NULL OR (balance_before >= 0 AND balance_after >= 0));

-- A table whose rows are history: never updated or deleted.
CREATE FUNCTION append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;

CREATE TABLE holds (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    wallet_id       BIGINT NOT NULL REFERENCES wallets (id),
    -- A held transfer (escrow): captures move the money to this wallet.
    to_wallet_id    BIGINT REFERENCES wallets (id),
    amount          NUMERIC NOT NULL CHECK (amount > 0),
    captured        NUMERIC NOT NULL DEFAULT 0,
    -- Given back by a void, an expiry or a final capture.
    released        NUMERIC NOT NULL DEFAULT 0 CHECK (released >= 0),
    status          TEXT NOT NULL DEFAULT 'ACTIVE'
                    CHECK (status IN ('ACTIVE', 'CAPTURED', 'VOIDED', 'EXPIRED')),
    -- The client's key, scoped to the wallet like a movement's.
    idempotency_key TEXT NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 128),
    expires_at      TIMESTAMPTZ NOT NULL,
    description     TEXT CHECK (length(description) <= 255),
    reference       TEXT CHECK (length(reference) BETWEEN 1 AND 128),
    metadata        JSONB CHECK (jsonb_typeof(metadata) = 'object' AND octet_length(metadata::text) <= 8192),
    created_by      TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (wallet_id, idempotency_key),
    CHECK (to_wallet_id <> wallet_id),
    CHECK (captured >= 0 AND captured + released <= amount),
    -- What is still reserved is amount - captured while ACTIVE, nothing after: a hold
    -- that ended accounts for all of its amount.
    CHECK (CASE WHEN status = 'ACTIVE' THEN released = 0 AND captured < amount
                ELSE captured + released = amount END)
);
CREATE INDEX holds_wallet_idx ON holds (wallet_id, created_at, id);
-- The expiry worker's queue: only ACTIVE holds, soonest first.
CREATE INDEX holds_expiring_idx ON holds (expires_at, id) WHERE status = 'ACTIVE';

-- What may change, and how: captured only grows, released is set once at the end, status
-- leaves ACTIVE once and never returns.
CREATE FUNCTION holds_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id OR NEW.wallet_id IS DISTINCT FROM OLD.wallet_id
       OR NEW.to_wallet_id IS DISTINCT FROM OLD.to_wallet_id OR NEW.amount <> OLD.amount
       OR NEW.idempotency_key <> OLD.idempotency_key OR NEW.expires_at <> OLD.expires_at
       OR NEW.description IS DISTINCT FROM OLD.description
       OR NEW.reference IS DISTINCT FROM OLD.reference
       OR NEW.metadata IS DISTINCT FROM OLD.metadata OR NEW.created_by <> OLD.created_by
       OR NEW.created_at <> OLD.created_at THEN
        RAISE EXCEPTION 'hold %: only its progress may change', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.status <> 'ACTIVE' OR NEW.captured < OLD.captured
       OR (NEW.status = 'ACTIVE' AND NEW.released <> 0) THEN
        RAISE EXCEPTION 'hold %: % (captured %, released %) cannot become % (captured %, released %)',
            OLD.id, OLD.status, OLD.captured, OLD.released, NEW.status, NEW.captured, NEW.released
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER holds_guard BEFORE UPDATE ON holds FOR EACH ROW EXECUTE FUNCTION holds_guard();
CREATE TRIGGER holds_no_delete BEFORE DELETE ON holds FOR EACH ROW EXECUTE FUNCTION append_only();
CREATE TRIGGER holds_no_truncate BEFORE TRUNCATE ON holds FOR EACH STATEMENT EXECUTE FUNCTION append_only();

-- A hold's lifecycle, append-only: AUTHORIZED once, CAPTURED per capture, then VOIDED or
-- EXPIRED (or a final capture's release, on its CAPTURED event).
CREATE TABLE hold_events (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hold_id         BIGINT NOT NULL REFERENCES holds (id),
    kind            TEXT NOT NULL CHECK (kind IN ('AUTHORIZED', 'CAPTURED', 'VOIDED', 'EXPIRED')),
    -- AUTHORIZED: the amount reserved; CAPTURED: the amount moved; otherwise 0.
    amount          NUMERIC NOT NULL CHECK (amount >= 0),
    -- What this event gave back (a void, an expiry, a final capture's rest).
    released        NUMERIC NOT NULL DEFAULT 0 CHECK (released >= 0),
    -- CAPTURED: the row on the hold's wallet that moved the money.
    transaction_id  BIGINT REFERENCES transactions (id),
    -- captureHold / voidHold: the client's key (scoped to the hold) and what was asked,
    -- so that a replay is told from a conflict.
    idempotency_key TEXT CHECK (length(idempotency_key) BETWEEN 1 AND 128),
    requested       NUMERIC,
    final_capture   BOOLEAN NOT NULL DEFAULT FALSE,
    -- The token subject who asked, or 'expiry' for the service's worker.
    actor           TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    CHECK ((kind = 'CAPTURED') = (transaction_id IS NOT NULL)),
    UNIQUE (hold_id, idempotency_key)
);
CREATE INDEX hold_events_hold_idx ON hold_events (hold_id, id);
CREATE TRIGGER hold_events_append_only BEFORE UPDATE OR DELETE ON hold_events
    FOR EACH ROW EXECUTE FUNCTION append_only();
CREATE TRIGGER hold_events_no_truncate BEFORE TRUNCATE ON hold_events
    FOR EACH STATEMENT EXECUTE FUNCTION append_only();

-- A capture's journal row names the hold it settles.
ALTER TABLE transactions ADD COLUMN settles_hold_id BIGINT REFERENCES holds (id);
CREATE INDEX transactions_settles_hold_idx ON transactions (settles_hold_id, id)
    WHERE settles_hold_id IS NOT NULL;

-- Every change of a credit limit: who, when, from what, to what, why. Append-only.
CREATE TABLE credit_limit_changes (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    wallet_id       BIGINT NOT NULL REFERENCES wallets (id),
    previous_limit  NUMERIC NOT NULL CHECK (previous_limit >= 0),
    new_limit       NUMERIC NOT NULL CHECK (new_limit >= 0),
    reason          TEXT NOT NULL CHECK (length(reason) BETWEEN 1 AND 255),
    changed_by      TEXT NOT NULL,
    idempotency_key TEXT NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 128),
    created_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (wallet_id, idempotency_key)
);
CREATE INDEX credit_limit_changes_wallet_idx ON credit_limit_changes (wallet_id, created_at, id);
CREATE TRIGGER credit_limit_changes_append_only BEFORE UPDATE OR DELETE ON credit_limit_changes
    FOR EACH ROW EXECUTE FUNCTION append_only();
CREATE TRIGGER credit_limit_changes_no_truncate BEFORE TRUNCATE ON credit_limit_changes
    FOR EACH STATEMENT EXECUTE FUNCTION append_only();

-- Outbox: hold events for `holdUpdated`, and wallet events when any part of the available
-- balance changes (the snapshot carries all of it).
ALTER TABLE events DROP CONSTRAINT events_topic_check;
ALTER TABLE events ADD CONSTRAINT events_topic_check
    CHECK (topic IN ('TRANSACTION', 'WALLET', 'RECONCILIATION', 'HOLD'));
ALTER TABLE events
    ADD COLUMN held_balance NUMERIC,
    ADD COLUMN credit_limit NUMERIC;

CREATE OR REPLACE FUNCTION wallets_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (topic, subject_id, wallet_id, user_id, balance, locked_balance,
                        held_balance, credit_limit)
    SELECT 'WALLET', n.id, n.id, n.user_id, n.balance, n.locked_balance, n.held_balance,
           n.credit_limit
      FROM new_rows n JOIN old_rows o ON o.id = n.id
     WHERE o.balance IS DISTINCT FROM n.balance
        OR o.locked_balance IS DISTINCT FROM n.locked_balance
        OR o.held_balance IS DISTINCT FROM n.held_balance
        OR o.credit_limit IS DISTINCT FROM n.credit_limit
     ORDER BY n.id;
    RETURN NULL;
END $$;

CREATE FUNCTION holds_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (topic, subject_id, wallet_id, user_id)
    SELECT 'HOLD', h.id, h.wallet_id, w.user_id
      FROM changed_rows h JOIN wallets w ON w.id = h.wallet_id
     ORDER BY h.id;
    RETURN NULL;
END $$;
CREATE TRIGGER holds_insert_events AFTER INSERT ON holds
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION holds_events();
CREATE TRIGGER holds_update_events AFTER UPDATE ON holds
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION holds_events();
