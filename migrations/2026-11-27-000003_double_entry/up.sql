-- Double entry: every journal row that changes a wallet's balance is one entry whose
-- postings sum to zero per currency. The wallet's side is the journal row itself (its
-- signed amount: a credit adds amount + fee, a debit subtracts them); the other side is
-- one or more postings to the currency's system accounts, written by the database in the
-- same statement as the row, so no code path can forget them.
--
-- Sign convention: an account's balance is the sum of its postings; credits are positive,
-- debits negative, and the customers' wallets plus all system accounts of a currency sum to
-- exactly zero. Accounts that hold what we owe or earned (customer wallets, fee revenue)
-- carry positive balances; accounts that hold what we have or spent carry negative ones.
--   bank          fiat clearing: minus the money at the bank for customers
--                 (deposits post -amount, withdrawals +amount)
--   custody       crypto: minus what our addresses hold on chain (credits -amount,
--                 withdrawals +(amount + network fee))
--   network_fees  crypto: minus the network fees our addresses paid
--   fee_revenue   fees charged to users on withdrawals (+fee)

CREATE TABLE ledger_accounts (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code     TEXT NOT NULL CHECK (code IN ('bank', 'custody', 'network_fees', 'fee_revenue')),
    currency TEXT NOT NULL REFERENCES currencies (code),
    UNIQUE (currency, code)
);

-- Every currency has its accounts, including currencies configured later.
CREATE FUNCTION ledger_accounts_of_currency() RETURNS trigger
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
CREATE TRIGGER currencies_ledger_accounts AFTER INSERT ON currencies
    FOR EACH ROW EXECUTE FUNCTION ledger_accounts_of_currency();
INSERT INTO ledger_accounts (code, currency)
SELECT account.code, c.code
  FROM currencies c,
       unnest(CASE WHEN c.kind = 'FIAT' THEN ARRAY['bank', 'fee_revenue']
                   ELSE ARRAY['custody', 'network_fees', 'fee_revenue'] END)
       AS account (code);

-- The postings to system accounts. Append-only, like the journal. Written only by the
-- trigger below, from the journal row itself, so both references hold by construction.
-- They are deliberately not foreign keys: a foreign-key check takes a share lock on the
-- referenced row, and every deposit referencing the one `bank` account would then share
-- (and multixact) that row — the hot row double entry must not become.
CREATE TABLE ledger_postings (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The journal row whose entry this posting belongs to.
    transaction_id BIGINT NOT NULL,
    account_id     BIGINT NOT NULL,
    amount         NUMERIC NOT NULL CHECK (amount <> 0),
    created_at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX ledger_postings_account_idx ON ledger_postings (account_id, created_at, id);
CREATE INDEX ledger_postings_transaction_idx ON ledger_postings (transaction_id);

CREATE FUNCTION ledger_postings_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'postings are append-only: % on ledger_postings is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER ledger_postings_no_rewrite BEFORE UPDATE OR DELETE ON ledger_postings
    FOR EACH ROW EXECUTE FUNCTION ledger_postings_append_only();
CREATE TRIGGER ledger_postings_no_truncate BEFORE TRUNCATE ON ledger_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_postings_append_only();

-- The system side of a journal row's entry: (account code, amount) pairs that cancel the
-- row's effect on its wallet. A hold moves nothing and has none.
--   deposit     the bank or our addresses received it: -(amount + fee)
--   withdrawal  the bank or our addresses paid out the amount (on chain, plus the
--               network's fee): +(amount + network fee); the network fee is an expense:
--               -network fee; the fee charged to the user is revenue: +fee
--   refund      the exact opposite of the withdrawal it undoes
-- Until a withdrawal records its network fee separately, a crypto withdrawal's fee is the
-- network's fee, passed on to the user.
CREATE FUNCTION ledger_counter_legs(r transactions) RETURNS TABLE (code TEXT, amount NUMERIC)
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

-- Once per INSERT statement (a group-commit batch is one), not per row.
CREATE FUNCTION transactions_post_counter_legs() RETURNS trigger
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
CREATE TRIGGER transactions_counter_legs AFTER INSERT ON transactions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION transactions_post_counter_legs();

-- The journal written before double entry gets its counter postings.
INSERT INTO ledger_postings (transaction_id, account_id, amount, created_at)
SELECT r.id, a.id, leg.amount, r.created_at
  FROM transactions r
  JOIN wallets w ON w.id = r.wallet_id
 CROSS JOIN LATERAL ledger_counter_legs(r) AS leg
  JOIN ledger_accounts a ON a.currency = w.currency AND a.code = leg.code
 ORDER BY r.id;
