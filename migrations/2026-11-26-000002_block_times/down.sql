DROP TABLE sim_blocks;
