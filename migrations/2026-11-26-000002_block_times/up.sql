-- When each block of the simulated chain was mined, so that the chain can be asked what
-- it looked like at a moment in the past (the height at a reconciliation window's end).
CREATE TABLE sim_blocks (
    network  TEXT NOT NULL REFERENCES sim_chains (network),
    height   BIGINT NOT NULL CHECK (height > 0),
    mined_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (network, height)
);
CREATE INDEX sim_blocks_mined_at_idx ON sim_blocks (network, mined_at);

-- Blocks mined before their times were kept: the tip at its time, the others at the
-- beginning of time (a past window then sees at least as much as it did).
INSERT INTO sim_blocks (network, height, mined_at)
SELECT c.network, g, CASE WHEN g = c.height THEN c.mined_at ELSE '-infinity' END
  FROM sim_chains c, generate_series(1, c.height) AS g;
