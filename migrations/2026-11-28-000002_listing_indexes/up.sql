-- Filtered listings in API order, one ordered walk per type or status: a type or status
-- that is rare in a long history then costs a page to list, not the history.
CREATE INDEX transactions_wallet_type_idx ON transactions (wallet_id, type, created_at, id);
CREATE INDEX transactions_type_idx ON transactions (type, created_at, id);
-- COMPLETED is the final status of almost every row: listing it walks the history index,
-- so these hold only the other rows and cost nothing for most inserts.
CREATE INDEX transactions_wallet_status_idx ON transactions (wallet_id, status, created_at, id)
    WHERE status <> 'COMPLETED';
CREATE INDEX transactions_status_idx ON transactions (status, created_at, id)
    WHERE status <> 'COMPLETED';
