-- Gas in the books: ether the operator puts at wallet addresses to pay network fees (gas
-- funding, never a customer's deposit), the gas a token withdrawal pays in the network's
-- coin, and withdrawals a node refused (their nonce goes back to the address).

-- 1. `gas_funding`: the network coin the service itself put in custody to pay gas. It
--    reads positive (the service's own money, like what it owes): each funding posts
--    custody -amount (our addresses received it) and gas_funding +amount.
ALTER TABLE ledger_accounts DROP CONSTRAINT ledger_accounts_code_check;
ALTER TABLE ledger_accounts ADD CONSTRAINT ledger_accounts_code_check
    CHECK (code IN ('bank', 'custody', 'network_fees', 'fee_revenue', 'gas_funding'));

-- A network's own coin (not a token) gets the account too, also when configured later.
CREATE OR REPLACE FUNCTION ledger_accounts_of_currency() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_accounts (code, currency)
    SELECT account.code, NEW.code
      FROM unnest(CASE WHEN NEW.kind = 'FIAT' THEN ARRAY['bank', 'fee_revenue']
                       WHEN NEW.contract_address IS NULL
                           THEN ARRAY['custody', 'network_fees', 'fee_revenue', 'gas_funding']
                       ELSE ARRAY['custody', 'network_fees', 'fee_revenue'] END)
           AS account (code)
    ON CONFLICT DO NOTHING;
    RETURN NEW;
END $$;
INSERT INTO ledger_accounts (code, currency)
SELECT 'gas_funding', code FROM currencies WHERE kind = 'CRYPTO' AND contract_address IS NULL
ON CONFLICT DO NOTHING;

-- 2. Gas fundings: an operator records the transfer it is about to send (from its own
--    address, to a wallet's address, exactly this amount of the network's coin); the
--    deposit watcher recognises it by those three and records it here instead of holding
--    a deposit. Confirmed like a deposit, it is posted (custody -amount, gas_funding
--    +amount). The customer's balance never changes.
CREATE TABLE gas_fundings (
    id                     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The wallet whose address receives it (its customer is not credited).
    wallet_id              BIGINT      NOT NULL REFERENCES wallets (id),
    network                TEXT        NOT NULL,
    -- The network's coin: the currency of its postings.
    currency               TEXT        NOT NULL REFERENCES currencies (code),
    from_address           TEXT        NOT NULL,
    to_address             TEXT        NOT NULL,
    amount                 NUMERIC     NOT NULL CHECK (amount > 0),
    -- The operator's key: the same key on the same wallet names the same funding.
    idempotency_key        TEXT        NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 128),
    requested_by           TEXT        NOT NULL,
    -- EXPECTED: recorded, the transfer not seen yet; CONFIRMING: mined, counting
    -- confirmations; COMPLETED: posted; CANCELLED: withdrawn by an operator before any
    -- transfer was seen.
    status                 TEXT        NOT NULL
        CHECK (status IN ('EXPECTED', 'CONFIRMING', 'COMPLETED', 'CANCELLED')),
    status_reason          TEXT,
    chain_tx_hash          TEXT,
    block_number           BIGINT,
    confirmations          INTEGER     NOT NULL DEFAULT 0,
    required_confirmations INTEGER     NOT NULL CHECK (required_confirmations > 0),
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((status IN ('CONFIRMING', 'COMPLETED')) = (chain_tx_hash IS NOT NULL)),
    UNIQUE (wallet_id, idempotency_key)
);
-- A transfer funds at most once.
CREATE UNIQUE INDEX gas_fundings_chain_tx_key ON gas_fundings (network, chain_tx_hash)
    WHERE chain_tx_hash IS NOT NULL;
-- What the deposit watcher matches transfers against, and what the worker follows.
CREATE INDEX gas_fundings_expected_idx ON gas_fundings (network, to_address)
    WHERE status = 'EXPECTED';
CREATE INDEX gas_fundings_confirming_idx ON gas_fundings (network, id)
    WHERE status = 'CONFIRMING';
CREATE INDEX gas_fundings_wallet_idx ON gas_fundings (wallet_id, created_at, id);
CREATE INDEX gas_fundings_created_idx ON gas_fundings (created_at, id);

-- A funding's facts are fixed; only its progress moves, forward (back to EXPECTED only
-- when a reorganisation took its transfer off the chain before it was posted).
CREATE FUNCTION gas_fundings_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    progress CONSTANT text[] := ARRAY['status', 'status_reason', 'chain_tx_hash',
                                      'block_number', 'confirmations', 'updated_at'];
BEGIN
    IF TG_OP = 'DELETE' OR TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION 'gas fundings are kept: % on gas_fundings is not allowed', TG_OP
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF (to_jsonb(NEW) - progress)::text IS DISTINCT FROM (to_jsonb(OLD) - progress)::text THEN
        RAISE EXCEPTION 'gas funding % cannot be rewritten', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status AND (OLD.status, NEW.status) NOT IN (
        ('EXPECTED', 'CONFIRMING'), ('EXPECTED', 'CANCELLED'), ('CONFIRMING', 'COMPLETED'),
        ('CONFIRMING', 'EXPECTED')) THEN
        RAISE EXCEPTION 'gas funding % cannot move from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.status IN ('COMPLETED', 'CANCELLED') THEN
        RAISE EXCEPTION 'gas funding % is final', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    -- A transfer the ledger holds as a deposit is a customer's: never also gas funding.
    IF NEW.chain_tx_hash IS NOT NULL AND NEW.chain_tx_hash IS DISTINCT FROM OLD.chain_tx_hash
       AND EXISTS (SELECT 1 FROM transactions t
                    WHERE t.network = NEW.network AND t.chain_tx_hash = NEW.chain_tx_hash
                      AND t.type = 'DEPOSIT') THEN
        RAISE EXCEPTION 'transaction % on % is a deposit, not gas funding', NEW.chain_tx_hash, NEW.network
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER gas_fundings_no_rewrite BEFORE UPDATE OR DELETE ON gas_fundings
    FOR EACH ROW EXECUTE FUNCTION gas_fundings_guard();
CREATE TRIGGER gas_fundings_no_truncate BEFORE TRUNCATE ON gas_fundings
    FOR EACH STATEMENT EXECUTE FUNCTION gas_fundings_guard();

-- And the other way: a transfer recorded as gas funding is never a customer's deposit.
CREATE FUNCTION transactions_not_gas_funding() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM gas_fundings g
                WHERE g.network = NEW.network AND g.chain_tx_hash = NEW.chain_tx_hash) THEN
        RAISE EXCEPTION 'transaction % on % is gas funding, not a deposit', NEW.chain_tx_hash, NEW.network
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER transactions_deposit_not_gas_funding BEFORE INSERT ON transactions
    FOR EACH ROW WHEN (NEW.type = 'DEPOSIT' AND NEW.network IS NOT NULL)
    EXECUTE FUNCTION transactions_not_gas_funding();

-- A posting belongs to a journal row's entry or to a gas funding's: exactly one.
ALTER TABLE ledger_postings ALTER COLUMN transaction_id DROP NOT NULL;
ALTER TABLE ledger_postings ADD COLUMN gas_funding_id BIGINT;
ALTER TABLE ledger_postings ADD CONSTRAINT ledger_postings_one_entry
    CHECK ((transaction_id IS NULL) <> (gas_funding_id IS NULL)) NOT VALID;
ALTER TABLE ledger_postings VALIDATE CONSTRAINT ledger_postings_one_entry;
CREATE INDEX ledger_postings_gas_funding_idx ON ledger_postings (gas_funding_id)
    WHERE gas_funding_id IS NOT NULL;

-- A funding is posted once, by the database, when it completes.
CREATE FUNCTION gas_fundings_post() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    posted integer;
BEGIN
    INSERT INTO ledger_postings (gas_funding_id, account_id, amount, created_at)
    SELECT NEW.id, a.id, leg.amount, NEW.updated_at
      FROM (VALUES ('custody', -NEW.amount), ('gas_funding', NEW.amount)) AS leg (code, amount)
      JOIN ledger_accounts a ON a.currency = NEW.currency AND a.code = leg.code;
    GET DIAGNOSTICS posted = ROW_COUNT;
    IF posted <> 2 THEN
        RAISE EXCEPTION 'gas funding %: % has no custody or gas_funding account', NEW.id, NEW.currency
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER gas_fundings_completed AFTER UPDATE OF status ON gas_fundings
    FOR EACH ROW WHEN (NEW.status = 'COMPLETED' AND OLD.status <> 'COMPLETED')
    EXECUTE FUNCTION gas_fundings_post();

-- 3. A token withdrawal's gas is paid in the network's coin by the wallet's address: its
--    debit (a journal row of the token wallet) also posts, in the coin, custody +gas (the
--    addresses hold that much less) and network_fees -gas (spent). Each currency's
--    entry still sums to zero. The gas is what the receipt charged: gasUsed × the
--    effective gas price, both recorded on the debit.
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
    IF EXISTS (SELECT 1 FROM new_rows
                WHERE type = 'WITHDRAW' AND NOT hold AND gas_used IS NOT NULL) THEN
        INSERT INTO ledger_postings (transaction_id, account_id, amount, created_at)
        SELECT r.id, a.id, leg.amount, r.created_at
          FROM new_rows r
          JOIN wallets w ON w.id = r.wallet_id
          JOIN currencies token ON token.code = w.currency AND token.contract_address IS NOT NULL
          JOIN currencies coin ON coin.network = token.network AND coin.kind = 'CRYPTO'
                              AND coin.contract_address IS NULL
         CROSS JOIN LATERAL (VALUES ('custody', r.gas_price * r.gas_used),
                                    ('network_fees', -(r.gas_price * r.gas_used))) AS leg (code, amount)
          JOIN ledger_accounts a ON a.currency = coin.code AND a.code = leg.code
         WHERE r.type = 'WITHDRAW' AND NOT r.hold AND r.gas_price * r.gas_used > 0;
    END IF;
    RETURN NULL;
END $$;

-- The token withdrawals debited before this get their gas postings.
INSERT INTO ledger_postings (transaction_id, account_id, amount, created_at)
SELECT r.id, a.id, leg.amount, r.created_at
  FROM transactions r
  JOIN wallets w ON w.id = r.wallet_id
  JOIN currencies token ON token.code = w.currency AND token.contract_address IS NOT NULL
  JOIN currencies coin ON coin.network = token.network AND coin.kind = 'CRYPTO'
                      AND coin.contract_address IS NULL
 CROSS JOIN LATERAL (VALUES ('custody', r.gas_price * r.gas_used),
                            ('network_fees', -(r.gas_price * r.gas_used))) AS leg (code, amount)
  JOIN ledger_accounts a ON a.currency = coin.code AND a.code = leg.code
 WHERE r.type = 'WITHDRAW' AND NOT r.hold AND r.gas_price * r.gas_used > 0
 ORDER BY r.id;

-- 4. A withdrawal the node refused (its address could not pay for it) fails, and the
--    nonce its attempts took goes back to the address for the next withdrawal. Its
--    attempts keep their record, marked with the node's refusal; a refused attempt no
--    longer holds its nonce.
ALTER TABLE withdrawal_attempts ADD COLUMN refused TEXT
    CHECK (length(refused) BETWEEN 1 AND 1024);
DROP INDEX withdrawal_attempts_nonce_key;
CREATE UNIQUE INDEX withdrawal_attempts_nonce_key
    ON withdrawal_attempts (network, from_address, nonce)
    WHERE replaces IS NULL AND refused IS NULL;

CREATE OR REPLACE FUNCTION withdrawal_attempts_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- The one change allowed: marking an attempt refused, once.
    IF TG_OP = 'UPDATE' AND OLD.refused IS NULL AND NEW.refused IS NOT NULL
       AND (to_jsonb(NEW) - 'refused')::text = (to_jsonb(OLD) - 'refused')::text THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'withdrawal attempts are append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;
