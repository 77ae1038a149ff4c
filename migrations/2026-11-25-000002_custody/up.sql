-- HD custody: crypto wallets get an address derived from the service's seed.
-- The seed never enters the database; a wallet keeps its derivation path and address.

-- Next unused address index per network. It is taken with a row lock in the transaction
-- that creates the wallet, so concurrent creations get distinct indexes and a creation
-- that rolls back leaves no gap.
CREATE TABLE hd_indexes (
    network    TEXT PRIMARY KEY,
    next_index INTEGER NOT NULL DEFAULT 0 CHECK (next_index >= 0)
);
INSERT INTO hd_indexes (network) VALUES ('bitcoin'), ('ethereum');

-- A crypto wallet has all three, a fiat wallet none.
ALTER TABLE wallets ADD CONSTRAINT wallets_custody_complete CHECK (
    (network IS NULL) = (address IS NULL) AND (address IS NULL) = (derivation_path IS NULL)
);

UPDATE currencies SET enabled = TRUE WHERE code IN ('BTC', 'ETH');
