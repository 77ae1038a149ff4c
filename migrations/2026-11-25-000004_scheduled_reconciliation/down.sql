DROP TABLE scheduled_jobs;
DROP INDEX reconciliations_checkpoint_idx;
ALTER TABLE reconciliations DROP COLUMN chain_height;
