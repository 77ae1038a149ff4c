-- The durable event feed: every outbox event gets a type, the state it recorded, and a
-- gap-free position (its sequence) in the order events were written; balance alerts,
-- webhook endpoints with their deliveries, and the position of the message stream.
--
-- Order. Event ids are drawn by the triggers below, in the writing transaction, after it
-- changed (and so locked) the row the event is about: two events of one wallet have ids
-- in the order the wallet changed, and an event written after another transaction
-- committed has a higher id than that transaction's events. Id order is therefore a valid
-- commit order. What id order alone lacks is finality: a lower id may still be in a
-- running transaction (or be rolled back). The sequencer (`sequence_events`, called by the
-- service's listener) only numbers events up to an id `upto` read at one moment once
-- every transaction that was running just after it has ended: every id at or below
-- `upto` is then committed or never will be. It numbers them in id order, contiguously,
-- in one transaction at a time (an advisory lock), so the numbered events only ever grow
-- by a suffix: a reader at position N has seen every event numbered N or less, and
-- nothing can later be numbered below it.
--
-- A position is stored once per run of consecutive ids (`event_runs`), not per event: an
-- event's sequence is its run's first sequence plus its distance from the run's first id.

-- The transaction-id order of the first outbox readers is replaced by the sequence.
DROP INDEX events_tx_id_id_idx;
ALTER TABLE events DROP COLUMN tx_id;

ALTER TABLE events
    -- What happened, as the API names it.
    ADD COLUMN type TEXT,
    -- The state the change left: a journal row's or a hold's status, an alert's direction,
    -- why an endpoint was disabled.
    ADD COLUMN status TEXT,
    ADD COLUMN confirmations INTEGER,
    ADD COLUMN captured NUMERIC,
    ADD COLUMN released NUMERIC,
    ALTER COLUMN wallet_id DROP NOT NULL,
    ALTER COLUMN user_id DROP NOT NULL;

UPDATE events SET type = CASE topic
    WHEN 'TRANSACTION' THEN 'TRANSACTION_UPDATED'
    WHEN 'WALLET' THEN 'WALLET_UPDATED'
    WHEN 'RECONCILIATION' THEN 'RECONCILIATION_RECORDED'
    WHEN 'HOLD' THEN (SELECT CASE h.status WHEN 'VOIDED' THEN 'HOLD_VOIDED'
                                           WHEN 'EXPIRED' THEN 'HOLD_EXPIRED'
                                           WHEN 'CAPTURED' THEN 'HOLD_CAPTURED'
                                           ELSE 'HOLD_AUTHORIZED' END
                        FROM holds h WHERE h.id = events.subject_id) END;
ALTER TABLE events ALTER COLUMN type SET NOT NULL;

ALTER TABLE events DROP CONSTRAINT events_topic_check;
ALTER TABLE events ADD CONSTRAINT events_topic_check
    CHECK (topic IN ('TRANSACTION', 'WALLET', 'RECONCILIATION', 'HOLD', 'ALERT', 'WEBHOOK_ENDPOINT'));
ALTER TABLE events ADD CONSTRAINT events_type_check CHECK (type IN (
    'TRANSACTION_CREATED', 'TRANSACTION_UPDATED', 'WALLET_UPDATED',
    'HOLD_AUTHORIZED', 'HOLD_CAPTURED', 'HOLD_VOIDED', 'HOLD_EXPIRED',
    'RECONCILIATION_RECORDED', 'BALANCE_ALERT', 'WEBHOOK_ENDPOINT_DISABLED'));
-- Only an operator's event (an endpoint disabled) names no wallet.
ALTER TABLE events ADD CONSTRAINT events_wallet_check
    CHECK ((wallet_id IS NULL) = (topic = 'WEBHOOK_ENDPOINT') AND (user_id IS NULL) = (wallet_id IS NULL));

CREATE TABLE event_runs (
    first_sequence BIGINT PRIMARY KEY CHECK (first_sequence > 0),
    first_event_id BIGINT NOT NULL UNIQUE,
    last_event_id  BIGINT NOT NULL CHECK (last_event_id >= first_event_id),
    sequenced_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Numbers every event with an id in (last numbered, upto], in id order; returns the last
-- sequence number given. One session numbers at a time (another waits for it, then finds
-- what it numbered). The caller guarantees no transaction can still commit an event with
-- an id at or below `upto`.
CREATE FUNCTION sequence_events(upto BIGINT) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    run_first BIGINT;
    last_sequence BIGINT;
    numbered_to BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('wallet.sequence_events'));
    SELECT r.first_sequence, r.first_sequence + (r.last_event_id - r.first_event_id),
           r.last_event_id
      INTO run_first, last_sequence, numbered_to
      FROM event_runs r ORDER BY r.first_sequence DESC LIMIT 1;
    last_sequence := COALESCE(last_sequence, 0);
    numbered_to := COALESCE(numbered_to, 0);
    IF upto <= numbered_to THEN
        RETURN last_sequence;
    END IF;
    -- Runs of consecutive ids ("gaps and islands": id - row_number is constant in one).
    -- One that goes on from the last run's last id extends it (ids are drawn one at a
    -- time, so without a rolled-back writer the feed is a single run).
    WITH numbered AS (
        SELECT id, row_number() OVER (ORDER BY id) AS n
          FROM events WHERE id > numbered_to AND id <= upto),
    islands AS (
        SELECT last_sequence + min(n) AS first_sequence, min(id) AS first_id, max(id) AS upto_id
          FROM numbered GROUP BY id - n),
    extended AS (
        UPDATE event_runs r SET last_event_id = i.upto_id
          FROM islands i
         WHERE r.first_sequence = run_first AND i.first_id = numbered_to + 1
        RETURNING i.first_id)
    INSERT INTO event_runs (first_sequence, first_event_id, last_event_id)
    SELECT i.first_sequence, i.first_id, i.upto_id FROM islands i
     WHERE i.first_id NOT IN (SELECT first_id FROM extended);
    RETURN (SELECT r.first_sequence + (r.last_event_id - r.first_event_id)
              FROM event_runs r ORDER BY r.first_sequence DESC LIMIT 1);
END $$;

-- The transactions of this database running now, as 32-bit transaction ids: those a
-- session's `pg_stat_activity` row shows (every running transaction with an id — also one
-- that got its id after the newest completed one, which a snapshot's in-progress list
-- leaves out), and a snapshot's in-progress list (sessions whose rows another role may
-- not see), less ids seen running in another database (ids are cluster-wide, but nothing
-- there writes this outbox, so a long job next door must not hold the feed back). The
-- caller clears the statistics snapshot first (`pg_stat_activity` is cached per
-- transaction).
CREATE FUNCTION feed_running() RETURNS SETOF BIGINT
LANGUAGE sql STABLE AS $$
    SELECT a.backend_xid::text::bigint FROM pg_stat_activity a
     WHERE a.datname = current_database() AND a.backend_xid IS NOT NULL
       AND a.pid <> pg_backend_pid()
    UNION
    SELECT x::text::bigint & 4294967295 FROM pg_snapshot_xip(pg_current_snapshot()) AS x
     WHERE (x::text::bigint & 4294967295) NOT IN (
           SELECT a.backend_xid::text::bigint FROM pg_stat_activity a
            WHERE a.datname IS DISTINCT FROM current_database() AND a.backend_xid IS NOT NULL)
$$;

-- One pass of a sequencer, in one round trip: numbers what became final since the last pass
-- (`pending_upto`, noted when `pending_running` were running: once none of them is, every
-- id up to it is committed or never will be, and visible to any later snapshot), notes what
-- to number next (the highest id now, then the transactions running now — in that order:
-- a transaction holding an id at or below the noted one got its transaction id before the
-- note, so it is in the list unless it has ended), and returns the head.
CREATE FUNCTION feed_advance(pending_upto BIGINT, pending_running BIGINT[],
                             OUT waiting BOOLEAN, OUT upto BIGINT, OUT running BIGINT[],
                             OUT head_sequence BIGINT, OUT head_id BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    numbered_to BIGINT;
BEGIN
    waiting := FALSE;
    IF pending_upto IS NOT NULL THEN
        PERFORM pg_stat_clear_snapshot();
        IF EXISTS (SELECT 1 FROM feed_running() AS r(x) WHERE r.x = ANY (pending_running)) THEN
            waiting := TRUE;
            upto := pending_upto;
            running := pending_running;
        ELSE
            PERFORM sequence_events(pending_upto);
        END IF;
    END IF;
    IF NOT waiting THEN
        SELECT COALESCE(max(e.id), 0) INTO upto FROM events e;
        SELECT COALESCE(max(r.last_event_id), 0) INTO numbered_to FROM event_runs r;
        IF upto <= numbered_to THEN
            upto := NULL;
        ELSE
            PERFORM pg_stat_clear_snapshot();
            running := ARRAY(SELECT feed_running());
            IF cardinality(running) = 0 THEN
                -- Nothing running: the noted ids are final already.
                PERFORM sequence_events(upto);
                upto := NULL;
                running := NULL;
            ELSE
                waiting := TRUE;
            END IF;
        END IF;
    END IF;
    SELECT r.first_sequence + (r.last_event_id - r.first_event_id), r.last_event_id
      INTO head_sequence, head_id
      FROM event_runs r ORDER BY r.first_sequence DESC LIMIT 1;
    head_sequence := COALESCE(head_sequence, 0);
    head_id := COALESCE(head_id, 0);
END $$;

-- Triggers: the outbox rows now say what happened and what state it left.
CREATE OR REPLACE FUNCTION transactions_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (topic, type, subject_id, wallet_id, user_id, status, confirmations)
    SELECT 'TRANSACTION',
           CASE TG_OP WHEN 'INSERT' THEN 'TRANSACTION_CREATED' ELSE 'TRANSACTION_UPDATED' END,
           r.id, r.wallet_id, w.user_id, r.status, r.confirmations
      FROM changed_rows r JOIN wallets w ON w.id = r.wallet_id
     ORDER BY r.id;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION holds_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (topic, type, subject_id, wallet_id, user_id, status, captured, released)
    SELECT 'HOLD',
           CASE WHEN TG_OP = 'INSERT' THEN 'HOLD_AUTHORIZED'
                WHEN h.status = 'VOIDED' THEN 'HOLD_VOIDED'
                WHEN h.status = 'EXPIRED' THEN 'HOLD_EXPIRED'
                ELSE 'HOLD_CAPTURED' END,
           h.id, h.wallet_id, w.user_id, h.status, h.captured, h.released
      FROM changed_rows h JOIN wallets w ON w.id = h.wallet_id
     ORDER BY h.id;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION reconciliations_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (topic, type, subject_id, wallet_id, user_id, status)
    SELECT 'RECONCILIATION', 'RECONCILIATION_RECORDED', NEW.id, NEW.wallet_id, w.user_id, NEW.status
      FROM wallets w WHERE w.id = NEW.wallet_id;
    RETURN NULL;
END $$;

-- Balance alerts: a threshold on a wallet's available balance
-- (balance + credit limit - locked - held). An alert fires when a committed change of the
-- wallet crosses it — `below`: from at or above the threshold to under it; `above`: from at
-- or under it to over it — and is re-armed by the change that crosses back. Crossing is
-- judged between the wallet's committed states, so it needs no state of its own: every
-- change of a wallet passes this trigger with the row before and after, in lock order.
CREATE TABLE balance_alerts (
    id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    wallet_id   BIGINT NOT NULL REFERENCES wallets (id),
    below       NUMERIC,
    above       NUMERIC,
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at  TIMESTAMPTZ,
    CHECK (below IS NOT NULL OR above IS NOT NULL)
);
CREATE INDEX balance_alerts_wallet_idx ON balance_alerts (wallet_id) WHERE deleted_at IS NULL;

CREATE OR REPLACE FUNCTION wallets_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (topic, type, subject_id, wallet_id, user_id, balance, locked_balance,
                        held_balance, credit_limit)
    SELECT 'WALLET', 'WALLET_UPDATED', n.id, n.id, n.user_id, n.balance, n.locked_balance,
           n.held_balance, n.credit_limit
      FROM new_rows n JOIN old_rows o ON o.id = n.id
     WHERE o.balance IS DISTINCT FROM n.balance
        OR o.locked_balance IS DISTINCT FROM n.locked_balance
        OR o.held_balance IS DISTINCT FROM n.held_balance
        OR o.credit_limit IS DISTINCT FROM n.credit_limit
     ORDER BY n.id;
    INSERT INTO events (topic, type, subject_id, wallet_id, user_id, balance, locked_balance,
                        held_balance, credit_limit, status)
    SELECT 'ALERT', 'BALANCE_ALERT', a.id, n.id, n.user_id, n.balance, n.locked_balance,
           n.held_balance, n.credit_limit, c.direction
      FROM new_rows n
      JOIN old_rows o ON o.id = n.id
      JOIN balance_alerts a ON a.wallet_id = n.id AND a.deleted_at IS NULL
      CROSS JOIN LATERAL (SELECT o.balance + o.credit_limit - o.locked_balance - o.held_balance,
                                 n.balance + n.credit_limit - n.locked_balance - n.held_balance)
                         AS v(was, now)
      CROSS JOIN LATERAL (SELECT 'BELOW' WHERE v.was >= a.below AND v.now < a.below
                          UNION ALL
                          SELECT 'ABOVE' WHERE v.was <= a.above AND v.now > a.above)
                         AS c(direction)
     ORDER BY n.id, a.id;
    RETURN NULL;
END $$;

-- Webhook endpoints (registered by operators) and what was sent to them.
CREATE TABLE webhook_endpoints (
    id                    BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    url                   TEXT NOT NULL,
    event_types           TEXT[] NOT NULL CHECK (cardinality(event_types) > 0),
    -- NULL: every wallet.
    wallet_ids            BIGINT[],
    description           TEXT,
    -- `whsec_` and the base64 key; kept to sign, shown only when made.
    secret                TEXT NOT NULL,
    -- After a rotation, deliveries are signed with both keys for a while.
    previous_secret       TEXT,
    previous_secret_until TIMESTAMPTZ,
    status                TEXT NOT NULL DEFAULT 'ENABLED' CHECK (status IN ('ENABLED', 'DISABLED')),
    disabled_reason       TEXT,
    -- The feed position up to which deliveries were made for this endpoint.
    position              BIGINT NOT NULL,
    -- Since when the oldest pending delivery has been failing (NULL: it is not).
    failing_since         TIMESTAMPTZ,
    -- The process delivering to this endpoint, until when (a lease, so that one process
    -- at a time sends, in order).
    lease_owner           TEXT,
    lease_until           TIMESTAMPTZ,
    created_by            TEXT NOT NULL,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    id              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    endpoint_id     BIGINT NOT NULL REFERENCES webhook_endpoints (id),
    event_id        BIGINT NOT NULL,
    sequence        BIGINT NOT NULL,
    event_type      TEXT NOT NULL,
    -- The body sent, identical on every attempt (the signature covers it).
    body            TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'PENDING'
                    CHECK (status IN ('PENDING', 'SUCCEEDED', 'FAILED')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_status_code INTEGER,
    last_error      TEXT,
    -- A manual redelivery names the delivery it repeats.
    redelivery_of   BIGINT REFERENCES webhook_deliveries (id),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at    TIMESTAMPTZ
);
-- An event is delivered once per endpoint by the feed (redeliveries are extra rows).
CREATE UNIQUE INDEX webhook_deliveries_event_idx ON webhook_deliveries (endpoint_id, event_id)
    WHERE redelivery_of IS NULL;
-- The queue of each endpoint, in feed order.
CREATE INDEX webhook_deliveries_pending_idx ON webhook_deliveries (endpoint_id, sequence, id)
    WHERE status = 'PENDING';
CREATE INDEX webhook_deliveries_listing_idx ON webhook_deliveries (endpoint_id, id);

CREATE TABLE webhook_attempts (
    id           BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    delivery_id  BIGINT NOT NULL REFERENCES webhook_deliveries (id),
    attempted_at TIMESTAMPTZ NOT NULL,
    latency_ms   INTEGER NOT NULL,
    status_code  INTEGER,
    error        TEXT,
    succeeded    BOOLEAN NOT NULL
);
CREATE INDEX webhook_attempts_delivery_idx ON webhook_attempts (delivery_id, id);

-- How far a consumer outside the database (the NATS stream) has been acknowledged.
CREATE TABLE stream_positions (
    name        TEXT PRIMARY KEY,
    position    BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until TIMESTAMPTZ,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Ids are drawn one at a time, in order (no per-session cache): the ordering argument above
-- relies on it. A wallet's events are read through its own index.
ALTER TABLE events ALTER COLUMN id SET CACHE 1;
CREATE INDEX events_wallet_id_idx ON events (wallet_id, id);
