ALTER TABLE transactions ALTER COLUMN id SET GENERATED ALWAYS;
CREATE OR REPLACE FUNCTION transactions_post_counter_legs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_postings (transaction_id, account_id, amount, created_at)
    SELECT r.id, a.id, leg.amount, r.created_at
      FROM new_rows r
      JOIN wallets w ON w.id = r.wallet_id
     CROSS JOIN LATERAL ledger_counter_legs(r) AS leg
      JOIN ledger_accounts a ON a.currency = w.currency AND a.code = leg.code;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION ledger_counter_legs(r transactions) RETURNS TABLE (code TEXT, amount NUMERIC)
LANGUAGE sql IMMUTABLE AS $$
    SELECT leg.code, leg.amount
      FROM (SELECT CASE WHEN r.type = 'REFUND' THEN -1 ELSE 1 END AS sign,
                   CASE WHEN r.network IS NULL THEN 0 ELSE r.fee END AS network_fee,
                   CASE WHEN r.network IS NULL THEN 'bank' ELSE 'custody' END AS holder) AS x,
           LATERAL (VALUES
              (x.holder, CASE WHEN r.type = 'DEPOSIT' THEN -(r.amount + r.fee)
                              ELSE x.sign * (r.amount + x.network_fee) END),
              ('network_fees', CASE WHEN r.type = 'DEPOSIT' THEN 0 ELSE -x.sign * x.network_fee END),
              ('fee_revenue', CASE WHEN r.type = 'DEPOSIT' THEN 0 ELSE x.sign * r.fee END)
           ) AS leg (code, amount)
     WHERE NOT r.hold AND r.type IN ('DEPOSIT', 'WITHDRAW', 'REFUND') AND leg.amount <> 0
$$;
DROP INDEX transactions_reference_idx;
ALTER TABLE transactions DROP COLUMN metadata;
ALTER TABLE transactions DROP COLUMN reference;
ALTER TABLE transactions DROP COLUMN network_fee;
DROP TRIGGER transactions_reversal_check ON transactions;
DROP FUNCTION transactions_check_reversal();
DROP INDEX transactions_tx_hash_key;
CREATE UNIQUE INDEX transactions_tx_hash_key ON transactions (wallet_id, tx_hash)
    WHERE hold_id IS NULL AND NOT (hold AND type = 'DEPOSIT') AND type <> 'TRANSFER_IN';
ALTER TABLE transactions DROP CONSTRAINT transactions_transfer_pair;
ALTER TABLE transactions ADD CONSTRAINT transactions_transfer_pair
    CHECK ((type = 'TRANSFER_IN') = (counterpart_id IS NOT NULL));
ALTER TABLE transactions DROP CONSTRAINT transactions_balance_arithmetic;
ALTER TABLE transactions ADD CONSTRAINT transactions_balance_arithmetic CHECK (
    COALESCE(balance_after = balance_before + CASE
        WHEN hold THEN 0
        WHEN type IN ('DEPOSIT', 'REFUND', 'TRANSFER_IN') THEN amount + fee
        WHEN type IN ('WITHDRAW', 'TRANSFER_OUT') THEN -(amount + fee)
    END, FALSE)
);
DROP INDEX transactions_reverses_key;
ALTER TABLE transactions DROP CONSTRAINT transactions_reversal_link;
ALTER TABLE transactions DROP COLUMN reverses_id;
ALTER TABLE transactions DROP CONSTRAINT transactions_type_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_type_check
    CHECK (type IN ('DEPOSIT', 'WITHDRAW', 'REFUND', 'TRANSFER_OUT', 'TRANSFER_IN'));
