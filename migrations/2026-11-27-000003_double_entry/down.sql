DROP TRIGGER transactions_counter_legs ON transactions;
DROP FUNCTION transactions_post_counter_legs();
DROP FUNCTION ledger_counter_legs(transactions);
DROP TABLE ledger_postings;
DROP FUNCTION ledger_postings_append_only();
DROP TRIGGER currencies_ledger_accounts ON currencies;
DROP FUNCTION ledger_accounts_of_currency();
DROP TABLE ledger_accounts;
