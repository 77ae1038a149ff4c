ALTER TABLE currencies DROP CONSTRAINT currencies_confirmations_for_crypto;
ALTER TABLE currencies DROP COLUMN required_confirmations;
DROP TABLE sim_failing_addresses;
DROP TABLE sim_transfers;
DROP TABLE sim_chains;
