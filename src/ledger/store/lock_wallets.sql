-- Locks, in id order, the wallets ($1) a batch's requests name — each only if the request
-- naming it may touch it: $2 and $3 pair each wallet id with the owner its caller is
-- limited to (NULL: anyone's). A wallet named only by callers who may not see it is never
-- locked. FOR NO KEY UPDATE: journal inserts that reference the wallet are not blocked.
SELECT wallets.id, wallets.user_id, wallets.currency, wallets.balance,
       wallets.locked_balance, wallets.network, wallets.address, wallets.derivation_path,
       wallets.created_at, wallets.updated_at, wallets.credit_limit, wallets.held_balance
  FROM wallets
 WHERE wallets.id = ANY ($1::bigint[])
   AND EXISTS (SELECT 1
                 FROM unnest($2::bigint[], $3::text[]) AS r (id, owner)
                WHERE r.id = wallets.id AND (r.owner IS NULL OR r.owner = wallets.user_id))
 ORDER BY wallets.id
   FOR NO KEY UPDATE
