-- The blocks a node-backed deposit watcher has processed, per network: the hash of each and
-- of its parent. A block whose parent is not the hash remembered for the block before it
-- means the chain reorganised; the watcher walks back to the block both chains share and
-- scans forward from there. Only recent blocks are kept.
CREATE TABLE chain_blocks (
    network     TEXT   NOT NULL,
    number      BIGINT NOT NULL CHECK (number >= 0),
    hash        TEXT   NOT NULL,
    parent_hash TEXT   NOT NULL,
    PRIMARY KEY (network, number)
);
