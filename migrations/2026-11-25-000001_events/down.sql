DROP TRIGGER reconciliations_event ON reconciliations;
DROP FUNCTION reconciliations_event();
DROP TRIGGER wallets_event ON wallets;
DROP FUNCTION wallets_event();
DROP TRIGGER transactions_event ON transactions;
DROP FUNCTION transactions_event();
DROP TABLE events;
DROP FUNCTION events_notify();
