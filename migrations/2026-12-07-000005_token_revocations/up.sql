-- Revoked bearer tokens: every token of `subject` issued (its `iat`) before
-- `revoked_before` is refused. One row per subject; revoking again moves the cutoff
-- forward, never back. A row whose cutoff is older than the longest token lifetime no
-- longer refuses anything (every token it revoked has expired); it stays as a record.
CREATE TABLE token_revocations (
    subject        TEXT PRIMARY KEY CHECK (octet_length(subject) BETWEEN 1 AND 128),
    revoked_before TIMESTAMPTZ NOT NULL,
    -- Who revoked: the operator's token subject, or `cli:<user>` for `wallet revoke-tokens`.
    revoked_by     TEXT NOT NULL,
    reason         TEXT NOT NULL,
    -- When the latest revocation of this subject was made.
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Each process reloads the revocations that can still matter (a recent cutoff).
CREATE INDEX token_revocations_recent_idx ON token_revocations (revoked_before);
