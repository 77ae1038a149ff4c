DROP TRIGGER holds_insert_events ON holds;
DROP TRIGGER holds_update_events ON holds;
DROP FUNCTION holds_events();
DELETE FROM events WHERE topic = 'HOLD';
ALTER TABLE events DROP CONSTRAINT events_topic_check;
ALTER TABLE events ADD CONSTRAINT events_topic_check
    CHECK (topic IN ('TRANSACTION', 'WALLET', 'RECONCILIATION'));
CREATE OR REPLACE FUNCTION wallets_events() RETURNS trigger
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
ALTER TABLE events DROP COLUMN held_balance, DROP COLUMN credit_limit;
DROP TABLE credit_limit_changes;
ALTER TABLE transactions DROP COLUMN settles_hold_id;
DROP TABLE hold_events;
DROP TABLE holds;
DROP FUNCTION holds_guard();
DROP FUNCTION append_only();
ALTER TABLE transactions DROP CONSTRAINT transactions_crypto_balances;
ALTER TABLE transactions ADD CONSTRAINT transactions_balance_before_check CHECK (balance_before >= 0);
ALTER TABLE transactions ADD CONSTRAINT transactions_balance_after_check CHECK (balance_after >= 0);
DROP TRIGGER wallets_within_credit ON wallets;
DROP FUNCTION wallets_refuse_overdraft();
ALTER TABLE wallets DROP CONSTRAINT wallets_crypto_within_balance;
ALTER TABLE wallets ADD CONSTRAINT wallets_balance_check CHECK (balance >= 0);
ALTER TABLE wallets ADD CONSTRAINT wallets_check CHECK (locked_balance <= balance);
ALTER TABLE wallets DROP COLUMN held_balance, DROP COLUMN credit_limit;
