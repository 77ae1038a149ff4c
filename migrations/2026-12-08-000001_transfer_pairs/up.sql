-- A transfer is two rows written by one statement: the sending side (TRANSFER_OUT) and
-- the receiving side (TRANSFER_IN, naming the sending row in counterpart_id). The
-- database checks the pair itself, whatever client writes it: each side has its mirror in
-- the same statement, with the same amount and fee, between two different wallets of one
-- currency, neither a hold. Alone, either side would create or destroy money (a transfer
-- posts nothing to system accounts: it moves money between customers).
CREATE FUNCTION transactions_check_transfer_pairs() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    broken RECORD;
BEGIN
    SELECT COALESCE(o.id, i.id) AS id, o.id IS NULL AS lone_in, i.id IS NULL AS lone_out
      INTO broken
      FROM (SELECT * FROM new_rows WHERE type = 'TRANSFER_OUT') o
      FULL JOIN (SELECT * FROM new_rows WHERE type = 'TRANSFER_IN') i
        ON i.counterpart_id = o.id
      LEFT JOIN wallets wo ON wo.id = o.wallet_id
      LEFT JOIN wallets wi ON wi.id = i.wallet_id
     WHERE o.id IS NULL OR i.id IS NULL
        OR i.amount <> o.amount OR i.fee <> o.fee
        OR i.wallet_id = o.wallet_id OR wi.currency <> wo.currency
        OR i.hold OR o.hold
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'transaction %: a transfer''s sides must mirror each other in one statement (%)',
            broken.id,
            CASE WHEN broken.lone_in THEN 'a TRANSFER_IN without its TRANSFER_OUT'
                 WHEN broken.lone_out THEN 'a TRANSFER_OUT without its TRANSFER_IN'
                 ELSE 'amount, fee, wallets or currency differ' END
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER transactions_transfer_pairs AFTER INSERT ON transactions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION transactions_check_transfer_pairs();
