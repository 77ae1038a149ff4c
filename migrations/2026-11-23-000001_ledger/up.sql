-- Fiat ledger: currencies, one wallet per (user, currency), an append-only journal
-- and reconciliation records. Amounts are NUMERIC end to end (never floating point).

CREATE TABLE currencies (
    code                     TEXT PRIMARY KEY CHECK (code ~ '^[A-Z]{3,10}$'),
    name                     TEXT NOT NULL,
    kind                     TEXT NOT NULL CHECK (kind IN ('FIAT', 'CRYPTO')),
    -- Number of decimals an amount may carry (USD 2, JPY 0, BTC 8, ETH 18).
    scale                    SMALLINT NOT NULL CHECK (scale BETWEEN 0 AND 18),
    -- Chain network for crypto currencies (e.g. 'bitcoin', 'ethereum'); NULL for fiat.
    network                  TEXT,
    -- A currency is offered to clients only when enabled (crypto waits for its chain).
    enabled                  BOOLEAN NOT NULL DEFAULT TRUE,
    -- |external - system| up to this value still counts as MATCHED.
    reconciliation_tolerance NUMERIC NOT NULL DEFAULT 0 CHECK (reconciliation_tolerance >= 0),
    CHECK ((kind = 'CRYPTO') = (network IS NOT NULL))
);

INSERT INTO currencies (code, name, kind, scale, network, enabled) VALUES
    ('USD', 'US Dollar',        'FIAT',   2,  NULL,       TRUE),
    ('EUR', 'Euro',             'FIAT',   2,  NULL,       TRUE),
    ('GBP', 'Pound Sterling',   'FIAT',   2,  NULL,       TRUE),
    ('CNY', 'Chinese Yuan',     'FIAT',   2,  NULL,       TRUE),
    ('JPY', 'Japanese Yen',     'FIAT',   0,  NULL,       TRUE),
    ('BTC', 'Bitcoin',          'CRYPTO', 8,  'bitcoin',  FALSE),
    ('ETH', 'Ether',            'CRYPTO', 18, 'ethereum', FALSE);

CREATE TABLE wallets (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         TEXT NOT NULL CHECK (length(user_id) BETWEEN 1 AND 128),
    currency        TEXT NOT NULL REFERENCES currencies (code),
    balance         NUMERIC NOT NULL DEFAULT 0 CHECK (balance >= 0),
    -- Reserved by withdrawals in flight; available = balance - locked.
    locked_balance  NUMERIC NOT NULL DEFAULT 0 CHECK (locked_balance >= 0),
    network         TEXT,
    address         TEXT UNIQUE,
    derivation_path TEXT UNIQUE,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (locked_balance <= balance),
    -- One wallet per user and currency; also serves "all wallets of a user".
    UNIQUE (user_id, currency)
);

-- Keyset pagination of wallets (operator listing, per-user listing uses the unique index).
CREATE INDEX wallets_created_at_id_idx ON wallets (created_at, id);

CREATE TABLE transactions (
    id                     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    wallet_id              BIGINT NOT NULL REFERENCES wallets (id),
    type                   TEXT NOT NULL CHECK (type IN ('DEPOSIT', 'WITHDRAW', 'REFUND')),
    amount                 NUMERIC NOT NULL CHECK (amount > 0),
    fee                    NUMERIC NOT NULL DEFAULT 0 CHECK (fee >= 0),
    balance_before         NUMERIC NOT NULL CHECK (balance_before >= 0),
    balance_after          NUMERIC NOT NULL CHECK (balance_after >= 0),
    status                 TEXT NOT NULL CHECK (status IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED')),
    -- The client's idempotency key ("txHash" in the API). Unique across the journal.
    tx_hash                TEXT NOT NULL UNIQUE CHECK (length(tx_hash) BETWEEN 1 AND 128),
    description            TEXT CHECK (length(description) <= 255),
    created_at             TIMESTAMPTZ NOT NULL,
    updated_at             TIMESTAMPTZ NOT NULL,
    -- Crypto only (NULL for fiat).
    network                TEXT,
    from_address           TEXT,
    to_address             TEXT,
    confirmations          INTEGER CHECK (confirmations >= 0),
    required_confirmations INTEGER CHECK (required_confirmations >= 0),
    block_number           BIGINT CHECK (block_number >= 0),
    gas_price              NUMERIC CHECK (gas_price >= 0),
    gas_used               BIGINT CHECK (gas_used >= 0),
    raw                    TEXT
);

-- A wallet's history in API order (the journal chain), and time-range queries on it.
CREATE INDEX transactions_wallet_created_idx ON transactions (wallet_id, created_at, id);
-- Operator-wide listing in API order.
CREATE INDEX transactions_created_idx ON transactions (created_at, id);
-- Movements still in flight: small, because almost every row is final.
CREATE INDEX transactions_in_flight_idx ON transactions (wallet_id, status)
    WHERE status IN ('PENDING', 'PROCESSING');

-- The journal is append-only: rows are never deleted, and what a row says happened
-- (wallet, type, amount, balances, key, time) never changes. Status may move on.
CREATE FUNCTION transactions_append_only() RETURNS trigger
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

CREATE TRIGGER transactions_no_rewrite BEFORE UPDATE OR DELETE ON transactions
    FOR EACH ROW EXECUTE FUNCTION transactions_append_only();
CREATE TRIGGER transactions_no_truncate BEFORE TRUNCATE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION transactions_append_only();

CREATE TABLE reconciliations (
    id                     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    wallet_id              BIGINT NOT NULL REFERENCES wallets (id),
    start_time             TIMESTAMPTZ NOT NULL,
    end_time               TIMESTAMPTZ NOT NULL,
    system_balance         NUMERIC NOT NULL,
    external_balance       NUMERIC NOT NULL,
    source                 TEXT NOT NULL CHECK (source IN ('EXTERNAL', 'CHAIN')),
    status                 TEXT NOT NULL CHECK (status IN ('PENDING', 'MATCHED', 'MISMATCH')),
    -- external_balance - system_balance
    difference             NUMERIC NOT NULL,
    notes                  TEXT,
    mismatch_reason        TEXT,
    unmatched_transactions TEXT[] NOT NULL DEFAULT '{}',
    created_at             TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    CHECK (start_time <= end_time)
);

-- Keyset pagination of a wallet's reconciliations, and "reconciliations of a period".
CREATE INDEX reconciliations_wallet_created_idx ON reconciliations (wallet_id, created_at, id);
CREATE INDEX reconciliations_wallet_period_idx ON reconciliations (wallet_id, start_time, end_time);
CREATE INDEX reconciliations_created_idx ON reconciliations (created_at, id);
