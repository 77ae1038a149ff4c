DROP TRIGGER transactions_transfer_pairs ON transactions;
DROP FUNCTION transactions_check_transfer_pairs();
