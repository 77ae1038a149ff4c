-- Refused attempts hold their nonces again (a second withdrawal may have taken one: then
-- this fails, as it should).
CREATE OR REPLACE FUNCTION withdrawal_attempts_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'withdrawal attempts are append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;
DROP INDEX withdrawal_attempts_nonce_key;
CREATE UNIQUE INDEX withdrawal_attempts_nonce_key ON withdrawal_attempts (network, from_address, nonce)
    WHERE replaces IS NULL;
ALTER TABLE withdrawal_attempts DROP COLUMN refused;

CREATE OR REPLACE FUNCTION transactions_post_counter_legs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_postings (transaction_id, account_id, amount, created_at)
    SELECT r.id, a.id, leg.amount, r.created_at
      FROM new_rows r
      JOIN wallets w ON w.id = r.wallet_id
     CROSS JOIN LATERAL ledger_counter_legs(r) AS leg
      JOIN ledger_accounts a ON a.currency = w.currency AND a.code = leg.code;
    IF EXISTS (SELECT 1 FROM new_rows WHERE type = 'REVERSAL') THEN
        INSERT INTO ledger_postings (transaction_id, account_id, amount, created_at)
        SELECT r.id, p.account_id, -p.amount, r.created_at
          FROM new_rows r
          JOIN ledger_postings p ON p.transaction_id = r.reverses_id
         WHERE r.type = 'REVERSAL';
    END IF;
    RETURN NULL;
END $$;

-- The postings this migration's entries made go with them (each entry sums to zero, so
-- every currency still balances).
ALTER TABLE ledger_postings DISABLE TRIGGER ledger_postings_no_rewrite;
DELETE FROM ledger_postings WHERE gas_funding_id IS NOT NULL;
DELETE FROM ledger_postings p
 USING ledger_accounts a, transactions t, wallets w
 WHERE p.account_id = a.id AND p.transaction_id = t.id AND t.wallet_id = w.id
   AND a.currency <> w.currency;
ALTER TABLE ledger_postings ENABLE TRIGGER ledger_postings_no_rewrite;
DROP INDEX ledger_postings_gas_funding_idx;
ALTER TABLE ledger_postings DROP CONSTRAINT ledger_postings_one_entry;
ALTER TABLE ledger_postings DROP COLUMN gas_funding_id;
ALTER TABLE ledger_postings ALTER COLUMN transaction_id SET NOT NULL;

DROP TRIGGER transactions_deposit_not_gas_funding ON transactions;
DROP FUNCTION transactions_not_gas_funding();
DROP TABLE gas_fundings;
DROP FUNCTION gas_fundings_post();
DROP FUNCTION gas_fundings_guard();

CREATE OR REPLACE FUNCTION ledger_accounts_of_currency() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_accounts (code, currency)
    SELECT account.code, NEW.code
      FROM unnest(CASE WHEN NEW.kind = 'FIAT' THEN ARRAY['bank', 'fee_revenue']
                       ELSE ARRAY['custody', 'network_fees', 'fee_revenue'] END)
           AS account (code)
    ON CONFLICT DO NOTHING;
    RETURN NEW;
END $$;
DELETE FROM ledger_accounts WHERE code = 'gas_funding';
ALTER TABLE ledger_accounts DROP CONSTRAINT ledger_accounts_code_check;
ALTER TABLE ledger_accounts ADD CONSTRAINT ledger_accounts_code_check
    CHECK (code IN ('bank', 'custody', 'network_fees', 'fee_revenue'));
