-- A crypto currency can be a token on its network (an ERC-20 contract on ethereum): its
-- contract address, in the network's canonical spelling. NULL for a network's own coin.
ALTER TABLE currencies ADD COLUMN contract_address TEXT UNIQUE;
ALTER TABLE currencies ADD CONSTRAINT currencies_contract_is_crypto
    CHECK (contract_address IS NULL OR (kind = 'CRYPTO' AND network IS NOT NULL));
