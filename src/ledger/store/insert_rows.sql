-- A judged batch's journal rows, one array per column, every id taken beforehand (a
-- transfer's receiving row names its sending row's id). The database's triggers post each
-- row's double entry and write its events in the same statement.
INSERT INTO transactions (id, wallet_id, type, amount, fee, balance_before,
    balance_after, status, tx_hash, description, hold, hold_id, network,
    from_address, to_address, chain_tx_hash, confirmations, required_confirmations,
    block_number, gas_price, gas_used, raw, counterpart_id, reverses_id,
    network_fee, reference, metadata, created_at, updated_at, settles_hold_id)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::numeric[], $5::numeric[],
    $6::numeric[], $7::numeric[], $8::text[], $9::text[], $10::text[], $11::boolean[],
    $12::bigint[], $13::text[], $14::text[], $15::text[], $16::text[], $17::integer[],
    $18::integer[], $19::bigint[], $20::numeric[], $21::bigint[], $22::text[],
    $23::bigint[], $24::bigint[], $25::numeric[], $26::text[], $27::jsonb[],
    $28::timestamptz[], $29::timestamptz[], $30::bigint[])
RETURNING id, wallet_id, type AS type_, amount, fee, balance_before, balance_after,
    status, tx_hash, description, created_at, updated_at, network, from_address,
    to_address, confirmations, required_confirmations, block_number, gas_price,
    gas_used, raw, hold, hold_id, chain_tx_hash, status_reason, counterpart_id,
    reverses_id, network_fee, reference, metadata, settles_hold_id
