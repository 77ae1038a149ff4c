DROP TABLE chain_blocks;
