DROP INDEX transactions_status_idx;
DROP INDEX transactions_wallet_status_idx;
DROP INDEX transactions_type_idx;
DROP INDEX transactions_wallet_type_idx;
