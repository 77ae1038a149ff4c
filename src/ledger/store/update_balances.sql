-- A judged batch's new balances: each touched wallet ($1) gets its balance after the
-- batch's rows ($2) and its time ($3: the batch's clock, or the wallet's own if later).
UPDATE wallets w
   SET balance = v.balance, updated_at = v.at
  FROM unnest($1::bigint[], $2::numeric[], $3::timestamptz[]) AS v (id, balance, at)
 WHERE w.id = v.id
