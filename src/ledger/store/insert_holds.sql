-- A judged batch's new holds, one array per column, every id taken beforehand (their
-- events name them in the same round trip). Nothing captured or released yet: zeros at
-- the amount's scale.
INSERT INTO holds (id, wallet_id, to_wallet_id, amount, captured, released, status,
    idempotency_key, expires_at, description, reference, metadata, created_by,
    created_at, updated_at)
SELECT n.id, n.wallet_id, n.to_wallet_id, n.amount, n.amount * 0, n.amount * 0, 'ACTIVE',
       n.key, n.expires_at, n.description, n.reference, n.metadata, n.created_by, n.at, n.at
  FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::numeric[], $5::text[],
              $6::timestamptz[], $7::text[], $8::text[], $9::jsonb[], $10::text[],
              $11::timestamptz[])
       AS n (id, wallet_id, to_wallet_id, amount, key, expires_at, description, reference,
             metadata, created_by, at)
