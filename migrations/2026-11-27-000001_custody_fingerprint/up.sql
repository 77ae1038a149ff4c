-- The fingerprint of the custody seed the wallets' addresses were derived from (never
-- the seed): a server started with another seed refuses to start instead of handing out
-- addresses it cannot sign for.
CREATE TABLE custody_fingerprint (
    singleton   BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    fingerprint TEXT NOT NULL CHECK (fingerprint ~ '^[0-9a-f]{64}$'),
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
