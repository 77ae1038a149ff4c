-- Transactional outbox for live subscriptions.
--
-- Triggers record an event in the same database transaction as the change it describes,
-- so a rolled-back change has no event and a committed one always has one. NOTIFY (sent
-- by Postgres at commit, and only then) wakes the listener of every server process; the
-- notification carries nothing, the listener reads the outbox.
--
-- Order and catch-up: `tx_id` is the writing transaction's id. A reader that only takes
-- events with tx_id below the oldest transaction still running (the xmin of its snapshot)
-- never sees an event "appear behind" its cursor, so a cursor on (tx_id, id) loses
-- nothing, however commits interleave, and a listener that was disconnected resumes from
-- its cursor.

CREATE TABLE events (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- pg_current_xact_id() as a bigint (xid8 fits; diesel has no xid8 type).
    tx_id          BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    topic          TEXT NOT NULL CHECK (topic IN ('TRANSACTION', 'WALLET', 'RECONCILIATION')),
    -- The transaction, wallet or reconciliation the event is about.
    subject_id     BIGINT NOT NULL,
    wallet_id      BIGINT NOT NULL,
    -- The wallet's owner: subscribers are filtered on it without a query per event.
    user_id        TEXT NOT NULL,
    -- WALLET events: the balances this change produced (later changes may have moved on).
    balance        NUMERIC,
    locked_balance NUMERIC,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX events_tx_id_id_idx ON events (tx_id, id);
CREATE INDEX events_created_at_idx ON events (created_at);

CREATE FUNCTION events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Identical notifications of one transaction are folded into one by Postgres.
    PERFORM pg_notify('wallet_events', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

CREATE FUNCTION transactions_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (topic, subject_id, wallet_id, user_id)
    SELECT 'TRANSACTION', NEW.id, NEW.wallet_id, w.user_id FROM wallets w WHERE w.id = NEW.wallet_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER transactions_event AFTER INSERT OR UPDATE ON transactions
    FOR EACH ROW EXECUTE FUNCTION transactions_event();

CREATE FUNCTION wallets_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (topic, subject_id, wallet_id, user_id, balance, locked_balance)
    VALUES ('WALLET', NEW.id, NEW.id, NEW.user_id, NEW.balance, NEW.locked_balance);
    RETURN NULL;
END;
$$;

CREATE TRIGGER wallets_event AFTER UPDATE ON wallets
    FOR EACH ROW
    WHEN (OLD.balance IS DISTINCT FROM NEW.balance
          OR OLD.locked_balance IS DISTINCT FROM NEW.locked_balance)
    EXECUTE FUNCTION wallets_event();

CREATE FUNCTION reconciliations_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (topic, subject_id, wallet_id, user_id)
    SELECT 'RECONCILIATION', NEW.id, NEW.wallet_id, w.user_id FROM wallets w WHERE w.id = NEW.wallet_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER reconciliations_event AFTER INSERT ON reconciliations
    FOR EACH ROW EXECUTE FUNCTION reconciliations_event();
