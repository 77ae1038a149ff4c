-- The simulated chain (the seed's MockBlockchain). Its state lives in Postgres so that it
-- survives restarts and every server process sees one chain. It stands behind the same
-- interface a real node client would (src/chain), and only its own code touches these
-- tables.

CREATE TABLE sim_chains (
    network  TEXT PRIMARY KEY,
    height   BIGINT NOT NULL DEFAULT 0 CHECK (height >= 0),
    mined_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO sim_chains (network) VALUES ('bitcoin'), ('ethereum');

CREATE TABLE sim_transfers (
    hash         TEXT PRIMARY KEY,
    network      TEXT NOT NULL REFERENCES sim_chains (network),
    from_address TEXT NOT NULL,
    to_address   TEXT NOT NULL,
    amount       NUMERIC NOT NULL CHECK (amount > 0),
    -- Paid by the sender: a flat fee (bitcoin-like) or gas_price * gas_used (ethereum-like).
    fee          NUMERIC NOT NULL DEFAULT 0 CHECK (fee >= 0),
    gas_price    NUMERIC CHECK (gas_price >= 0),
    gas_used     BIGINT CHECK (gas_used >= 0),
    status       TEXT NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'SUCCESS', 'FAILED')),
    -- The block that included it (NULL while pending).
    block_number BIGINT CHECK (block_number > 0),
    raw          TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    CHECK ((status = 'PENDING') = (block_number IS NULL))
);
CREATE INDEX sim_transfers_to_idx ON sim_transfers (network, to_address, created_at);
CREATE INDEX sim_transfers_from_idx ON sim_transfers (network, from_address, created_at);
CREATE INDEX sim_transfers_pending_idx ON sim_transfers (network) WHERE status = 'PENDING';

-- Fault injection (tests, demos): transfers to these addresses fail when mined.
CREATE TABLE sim_failing_addresses (
    network TEXT NOT NULL REFERENCES sim_chains (network),
    address TEXT NOT NULL,
    PRIMARY KEY (network, address)
);

-- Confirmations a deposit needs before it is credited, per network.
ALTER TABLE currencies ADD COLUMN required_confirmations INTEGER
    CHECK (required_confirmations > 0);
UPDATE currencies SET required_confirmations = 6 WHERE kind = 'CRYPTO';
ALTER TABLE currencies ADD CONSTRAINT currencies_confirmations_for_crypto
    CHECK ((kind = 'CRYPTO') = (required_confirmations IS NOT NULL));
