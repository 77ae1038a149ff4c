-- The steps of holds' lifecycles a judged batch records, in order.
INSERT INTO hold_events (hold_id, kind, amount, released, transaction_id, idempotency_key,
    requested, final_capture, actor, created_at)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::numeric[], $4::numeric[], $5::bigint[],
    $6::text[], $7::numeric[], $8::boolean[], $9::text[], $10::timestamptz[])
