UPDATE currencies SET enabled = FALSE WHERE code IN ('BTC', 'ETH');
ALTER TABLE wallets DROP CONSTRAINT wallets_custody_complete;
DROP TABLE hd_indexes;
