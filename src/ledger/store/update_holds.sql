-- The holds a judged batch captured or voided ($1), as it leaves them: captured ($2),
-- released ($3), status ($4), time ($5). The database's guard refuses any other change.
UPDATE holds h
   SET captured = v.captured, released = v.released, status = v.status, updated_at = v.at
  FROM unnest($1::bigint[], $2::numeric[], $3::numeric[], $4::text[], $5::timestamptz[])
       AS v (id, captured, released, status, at)
 WHERE h.id = v.id
