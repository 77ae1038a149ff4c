ALTER TABLE currencies DROP COLUMN contract_address;
