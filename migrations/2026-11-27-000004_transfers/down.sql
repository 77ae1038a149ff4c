CREATE OR REPLACE FUNCTION ledger_counter_legs(r transactions) RETURNS TABLE (code TEXT, amount NUMERIC)
LANGUAGE sql IMMUTABLE AS $$
    SELECT leg.code, leg.amount
      FROM (VALUES
              (CASE WHEN r.network IS NULL THEN 'bank' ELSE 'custody' END,
               CASE r.type WHEN 'WITHDRAW' THEN r.amount
                           WHEN 'REFUND' THEN -r.amount
                           ELSE -(r.amount + r.fee) END),
              (CASE WHEN r.network IS NULL THEN 'fee_revenue' ELSE 'network_fees' END,
               CASE r.type WHEN 'WITHDRAW' THEN r.fee
                           WHEN 'REFUND' THEN -r.fee
                           ELSE 0 END)
           ) AS leg (code, amount)
     WHERE NOT r.hold AND leg.amount <> 0
$$;
DROP INDEX transactions_tx_hash_key;
CREATE UNIQUE INDEX transactions_tx_hash_key ON transactions (wallet_id, tx_hash)
    WHERE hold_id IS NULL AND NOT (hold AND type = 'DEPOSIT');
DROP INDEX transactions_counterpart_key;
ALTER TABLE transactions DROP CONSTRAINT transactions_transfer_pair;
ALTER TABLE transactions DROP COLUMN counterpart_id;
ALTER TABLE transactions DROP CONSTRAINT transactions_balance_arithmetic;
ALTER TABLE transactions ADD CONSTRAINT transactions_balance_arithmetic CHECK (
    COALESCE(balance_after = balance_before + CASE
        WHEN hold THEN 0
        WHEN type IN ('DEPOSIT', 'REFUND') THEN amount + fee
        WHEN type = 'WITHDRAW' THEN -(amount + fee)
    END, FALSE)
);
ALTER TABLE transactions DROP CONSTRAINT transactions_type_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_type_check
    CHECK (type IN ('DEPOSIT', 'WITHDRAW', 'REFUND'));
