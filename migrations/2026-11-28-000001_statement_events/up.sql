-- Outbox events written once per statement instead of once per row: a group-commit batch
-- of N movements used to run 2N trigger functions, 2N single-row inserts into `events`
-- and 2N notifications; now it runs two of each. The events are the same rows as before,
-- in the same order (a statement's rows in id order; a batch's wallet events, from its
-- UPDATE, before its journal events, from its INSERT).

DROP TRIGGER transactions_event ON transactions;
DROP TRIGGER wallets_event ON wallets;
DROP FUNCTION transactions_event();
DROP FUNCTION wallets_event();

CREATE FUNCTION transactions_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (topic, subject_id, wallet_id, user_id)
    SELECT 'TRANSACTION', r.id, r.wallet_id, w.user_id
      FROM changed_rows r JOIN wallets w ON w.id = r.wallet_id
     ORDER BY r.id;
    RETURN NULL;
END $$;

-- A trigger with a transition table serves one event: one for inserts, one for updates
-- (a hold's progress).
CREATE TRIGGER transactions_insert_events AFTER INSERT ON transactions
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION transactions_events();
CREATE TRIGGER transactions_update_events AFTER UPDATE ON transactions
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION transactions_events();

CREATE FUNCTION wallets_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (topic, subject_id, wallet_id, user_id, balance, locked_balance)
    SELECT 'WALLET', n.id, n.id, n.user_id, n.balance, n.locked_balance
      FROM new_rows n JOIN old_rows o ON o.id = n.id
     WHERE o.balance IS DISTINCT FROM n.balance
        OR o.locked_balance IS DISTINCT FROM n.locked_balance
     ORDER BY n.id;
    RETURN NULL;
END $$;

CREATE TRIGGER wallets_events AFTER UPDATE ON wallets
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION wallets_events();
