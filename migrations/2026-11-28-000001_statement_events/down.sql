DROP TRIGGER wallets_events ON wallets;
DROP FUNCTION wallets_events();
DROP TRIGGER transactions_update_events ON transactions;
DROP TRIGGER transactions_insert_events ON transactions;
DROP FUNCTION transactions_events();

CREATE FUNCTION transactions_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (topic, subject_id, wallet_id, user_id)
    SELECT 'TRANSACTION', NEW.id, NEW.wallet_id, w.user_id FROM wallets w WHERE w.id = NEW.wallet_id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER transactions_event AFTER INSERT OR UPDATE ON transactions
    FOR EACH ROW EXECUTE FUNCTION transactions_event();

CREATE FUNCTION wallets_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (topic, subject_id, wallet_id, user_id, balance, locked_balance)
    VALUES ('WALLET', NEW.id, NEW.id, NEW.user_id, NEW.balance, NEW.locked_balance);
    RETURN NULL;
END;
$$;
CREATE TRIGGER wallets_event AFTER UPDATE ON wallets
    FOR EACH ROW
    WHEN (OLD.balance IS DISTINCT FROM NEW.balance
          OR OLD.locked_balance IS DISTINCT FROM NEW.locked_balance)
    EXECUTE FUNCTION wallets_event();
