DROP TABLE custody_fingerprint;
