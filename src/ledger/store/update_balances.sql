-- A judged batch's new balances: each touched wallet ($1) gets its balance ($2) and held
-- balance ($3) after the batch, and its time ($4: the batch's clock, or the wallet's own
-- if later).
UPDATE wallets w
   SET balance = v.balance, held_balance = v.held, updated_at = v.at
  FROM unnest($1::bigint[], $2::numeric[], $3::numeric[], $4::timestamptz[])
       AS v (id, balance, held, at)
 WHERE w.id = v.id
