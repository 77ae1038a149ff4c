-- Reversals, network fees recorded apart from the fee a user pays, and business
-- references and metadata on journal rows.

-- A REVERSAL row compensates one completed movement on the same wallet: same amount and
-- fee, the opposite balance change, the system side negated. History is never edited.
ALTER TABLE transactions DROP CONSTRAINT transactions_type_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_type_check
    CHECK (type IN ('DEPOSIT', 'WITHDRAW', 'REFUND', 'TRANSFER_OUT', 'TRANSFER_IN', 'REVERSAL'));
ALTER TABLE transactions ADD COLUMN reverses_id BIGINT REFERENCES transactions (id);
ALTER TABLE transactions ADD CONSTRAINT transactions_reversal_link
    CHECK ((type = 'REVERSAL') = (reverses_id IS NOT NULL));
-- At most one reversal per movement.
CREATE UNIQUE INDEX transactions_reverses_key ON transactions (reverses_id)
    WHERE reverses_id IS NOT NULL;

-- A reversal's direction is its original's, negated: the row trigger below checks it.
ALTER TABLE transactions DROP CONSTRAINT transactions_balance_arithmetic;
ALTER TABLE transactions ADD CONSTRAINT transactions_balance_arithmetic CHECK (
    COALESCE(balance_after = balance_before + CASE
        WHEN hold THEN 0
        WHEN type IN ('DEPOSIT', 'REFUND', 'TRANSFER_IN') THEN amount + fee
        WHEN type IN ('WITHDRAW', 'TRANSFER_OUT') THEN -(amount + fee)
        WHEN type = 'REVERSAL' THEN sign(balance_after - balance_before) * (amount + fee)
    END, FALSE)
);

-- A transfer's reversal is a pair like the transfer: the second row names the first
-- (counterpart_id) and, like a TRANSFER_IN, is not keyed on its own wallet.
ALTER TABLE transactions DROP CONSTRAINT transactions_transfer_pair;
ALTER TABLE transactions ADD CONSTRAINT transactions_transfer_pair CHECK (
    CASE type WHEN 'TRANSFER_IN' THEN counterpart_id IS NOT NULL
              WHEN 'REVERSAL' THEN TRUE
              ELSE counterpart_id IS NULL END
);
DROP INDEX transactions_tx_hash_key;
CREATE UNIQUE INDEX transactions_tx_hash_key ON transactions (wallet_id, tx_hash)
    WHERE hold_id IS NULL AND NOT (hold AND type = 'DEPOSIT') AND counterpart_id IS NULL;

CREATE FUNCTION transactions_check_reversal() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    original transactions;
BEGIN
    SELECT * INTO original FROM transactions WHERE id = NEW.reverses_id;
    IF original.id IS NULL OR original.wallet_id <> NEW.wallet_id OR original.hold
       OR original.hold_id IS NOT NULL OR original.network IS NOT NULL
       OR original.type NOT IN ('DEPOSIT', 'WITHDRAW', 'TRANSFER_OUT', 'TRANSFER_IN')
       OR original.amount <> NEW.amount OR original.fee <> NEW.fee
       OR NEW.balance_after - NEW.balance_before <> original.balance_before - original.balance_after THEN
        RAISE EXCEPTION 'journal row % does not reverse journal row %', NEW.id, NEW.reverses_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER transactions_reversal_check BEFORE INSERT ON transactions
    FOR EACH ROW WHEN (NEW.type = 'REVERSAL') EXECUTE FUNCTION transactions_check_reversal();

-- What our addresses pay the network for a crypto withdrawal, when it is not what the user
-- was charged (a configured flat withdrawal fee: the user pays the fee, the service the
-- network). Rows without it: the fee was the network's.
ALTER TABLE transactions ADD COLUMN network_fee NUMERIC CHECK (network_fee >= 0);

-- A business reference (the bank's statement id, an invoice number): searchable, not
-- unique. Metadata: a small JSON object of strings, for the client's own use.
ALTER TABLE transactions ADD COLUMN reference TEXT CHECK (length(reference) BETWEEN 1 AND 128);
ALTER TABLE transactions ADD COLUMN metadata JSONB
    CHECK (jsonb_typeof(metadata) = 'object' AND octet_length(metadata::text) <= 8192);
CREATE INDEX transactions_reference_idx ON transactions (reference, created_at, id)
    WHERE reference IS NOT NULL;

CREATE OR REPLACE FUNCTION ledger_counter_legs(r transactions) RETURNS TABLE (code TEXT, amount NUMERIC)
LANGUAGE sql IMMUTABLE AS $$
    SELECT leg.code, leg.amount
      FROM (SELECT CASE WHEN r.type = 'REFUND' THEN -1 ELSE 1 END AS sign,
                   COALESCE(r.network_fee, CASE WHEN r.network IS NULL THEN 0 ELSE r.fee END)
                       AS network_fee,
                   CASE WHEN r.network IS NULL THEN 'bank' ELSE 'custody' END AS holder) AS x,
           LATERAL (VALUES
              (x.holder, CASE WHEN r.type = 'DEPOSIT' THEN -(r.amount + r.fee)
                              ELSE x.sign * (r.amount + x.network_fee) END),
              ('network_fees', CASE WHEN r.type = 'DEPOSIT' THEN 0 ELSE -x.sign * x.network_fee END),
              ('fee_revenue', CASE WHEN r.type = 'DEPOSIT' THEN 0 ELSE x.sign * r.fee END)
           ) AS leg (code, amount)
     WHERE NOT r.hold AND r.type IN ('DEPOSIT', 'WITHDRAW', 'REFUND') AND leg.amount <> 0
$$;

-- A reversal's system side is its original's, negated. (Looked for only when the
-- statement wrote a reversal: a deposit batch never joins the postings.)
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

-- A group-commit batch inserts a transfer's two rows in one statement with the others: the
-- receiving row names the sending row's id, so the batch takes its ids from the sequence
-- first (in arrival order) and inserts them explicitly.
ALTER TABLE transactions ALTER COLUMN id SET GENERATED BY DEFAULT;
