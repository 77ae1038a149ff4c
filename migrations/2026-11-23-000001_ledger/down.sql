DROP TABLE reconciliations;
DROP TABLE transactions;
DROP FUNCTION transactions_append_only();
DROP TABLE wallets;
DROP TABLE currencies;
