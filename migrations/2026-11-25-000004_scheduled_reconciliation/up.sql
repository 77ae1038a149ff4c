-- Scheduled reconciliation of crypto wallets against the chain, incremental: each run
-- starts from the wallet's last matched scheduled run (its end time, chain balance and
-- the chain height it had seen) instead of scanning the whole history again.

-- The chain height a scheduled reconciliation covered (NULL for other reconciliations).
ALTER TABLE reconciliations ADD COLUMN chain_height BIGINT CHECK (chain_height >= 0);
CREATE INDEX reconciliations_checkpoint_idx ON reconciliations (wallet_id, end_time)
    WHERE source = 'CHAIN' AND status = 'MATCHED' AND chain_height IS NOT NULL;

-- Periodic jobs every process runs: a conditional update on last_run elects one runner
-- per interval.
CREATE TABLE scheduled_jobs (
    name     TEXT PRIMARY KEY,
    last_run TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
);
INSERT INTO scheduled_jobs (name) VALUES ('chain_reconciliation');
