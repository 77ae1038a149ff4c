// @generated automatically by Diesel CLI.

diesel::table! {
    balance_alerts (id) {
        id -> Int8,
        wallet_id -> Int8,
        below -> Nullable<Numeric>,
        above -> Nullable<Numeric>,
        created_by -> Text,
        created_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    chain_backends (network) {
        network -> Text,
        backend -> Text,
        claimed_at -> Timestamptz,
    }
}

diesel::table! {
    chain_blocks (network, backend, number) {
        network -> Text,
        number -> Int8,
        hash -> Text,
        parent_hash -> Text,
        backend -> Text,
    }
}

diesel::table! {
    chain_nonces (network, backend, address) {
        network -> Text,
        address -> Text,
        next_nonce -> Int8,
        backend -> Text,
    }
}

diesel::table! {
    chain_reorgs (id) {
        id -> Int8,
        network -> Text,
        backend -> Text,
        above -> Int8,
        recorded_at -> Timestamptz,
    }
}

diesel::table! {
    chain_scan_cursors (network, backend) {
        network -> Text,
        block -> Int8,
        backend -> Text,
    }
}

diesel::table! {
    credit_limit_changes (id) {
        id -> Int8,
        wallet_id -> Int8,
        previous_limit -> Numeric,
        new_limit -> Numeric,
        reason -> Text,
        changed_by -> Text,
        idempotency_key -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    currencies (code) {
        code -> Text,
        name -> Text,
        kind -> Text,
        scale -> Int2,
        network -> Nullable<Text>,
        enabled -> Bool,
        reconciliation_tolerance -> Numeric,
        required_confirmations -> Nullable<Int4>,
        contract_address -> Nullable<Text>,
    }
}

diesel::table! {
    custody_fingerprint (singleton) {
        singleton -> Bool,
        fingerprint -> Text,
        recorded_at -> Timestamptz,
    }
}

diesel::table! {
    event_runs (first_sequence) {
        first_sequence -> Int8,
        first_event_id -> Int8,
        last_event_id -> Int8,
        sequenced_at -> Timestamptz,
    }
}

diesel::table! {
    events (id) {
        id -> Int8,
        topic -> Text,
        subject_id -> Int8,
        wallet_id -> Nullable<Int8>,
        user_id -> Nullable<Text>,
        balance -> Nullable<Numeric>,
        locked_balance -> Nullable<Numeric>,
        created_at -> Timestamptz,
        held_balance -> Nullable<Numeric>,
        credit_limit -> Nullable<Numeric>,
        #[sql_name = "type"]
        type_ -> Text,
        status -> Nullable<Text>,
        confirmations -> Nullable<Int4>,
        captured -> Nullable<Numeric>,
        released -> Nullable<Numeric>,
    }
}

diesel::table! {
    gas_fundings (id) {
        id -> Int8,
        wallet_id -> Int8,
        network -> Text,
        currency -> Text,
        from_address -> Text,
        to_address -> Text,
        amount -> Numeric,
        idempotency_key -> Text,
        requested_by -> Text,
        status -> Text,
        status_reason -> Nullable<Text>,
        chain_tx_hash -> Nullable<Text>,
        block_number -> Nullable<Int8>,
        confirmations -> Int4,
        required_confirmations -> Int4,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    hd_indexes (network) {
        network -> Text,
        next_index -> Int4,
    }
}

diesel::table! {
    hold_events (id) {
        id -> Int8,
        hold_id -> Int8,
        kind -> Text,
        amount -> Numeric,
        released -> Numeric,
        transaction_id -> Nullable<Int8>,
        idempotency_key -> Nullable<Text>,
        requested -> Nullable<Numeric>,
        final_capture -> Bool,
        actor -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    holds (id) {
        id -> Int8,
        wallet_id -> Int8,
        to_wallet_id -> Nullable<Int8>,
        amount -> Numeric,
        captured -> Numeric,
        released -> Numeric,
        status -> Text,
        idempotency_key -> Text,
        expires_at -> Timestamptz,
        description -> Nullable<Text>,
        reference -> Nullable<Text>,
        metadata -> Nullable<Jsonb>,
        created_by -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    ledger_accounts (id) {
        id -> Int8,
        code -> Text,
        currency -> Text,
    }
}

diesel::table! {
    ledger_postings (id) {
        id -> Int8,
        transaction_id -> Nullable<Int8>,
        account_id -> Int8,
        amount -> Numeric,
        created_at -> Timestamptz,
        gas_funding_id -> Nullable<Int8>,
    }
}

diesel::table! {
    legacy_token_deposits (hold_id) {
        hold_id -> Int8,
        network -> Text,
        tx_hash -> Text,
        name -> Nullable<Text>,
    }
}

diesel::table! {
    reconciliations (id) {
        id -> Int8,
        wallet_id -> Int8,
        start_time -> Timestamptz,
        end_time -> Timestamptz,
        system_balance -> Numeric,
        external_balance -> Numeric,
        source -> Text,
        status -> Text,
        difference -> Numeric,
        notes -> Nullable<Text>,
        mismatch_reason -> Nullable<Text>,
        unmatched_transactions -> Array<Nullable<Text>>,
        created_at -> Timestamptz,
        chain_height -> Nullable<Int8>,
    }
}

diesel::table! {
    scheduled_jobs (name) {
        name -> Text,
        last_run -> Timestamptz,
    }
}

diesel::table! {
    sim_blocks (network, height) {
        network -> Text,
        height -> Int8,
        mined_at -> Timestamptz,
    }
}

diesel::table! {
    sim_chains (network) {
        network -> Text,
        height -> Int8,
        mined_at -> Timestamptz,
    }
}

diesel::table! {
    sim_failing_addresses (network, address) {
        network -> Text,
        address -> Text,
    }
}

diesel::table! {
    sim_transfers (hash) {
        hash -> Text,
        network -> Text,
        from_address -> Text,
        to_address -> Text,
        amount -> Numeric,
        fee -> Numeric,
        gas_price -> Nullable<Numeric>,
        gas_used -> Nullable<Int8>,
        status -> Text,
        block_number -> Nullable<Int8>,
        raw -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    stream_positions (name) {
        name -> Text,
        position -> Int8,
        lease_owner -> Nullable<Text>,
        lease_until -> Nullable<Timestamptz>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    token_revocations (subject) {
        subject -> Text,
        revoked_before -> Timestamptz,
        revoked_by -> Text,
        reason -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    transactions (id) {
        id -> Int8,
        wallet_id -> Int8,
        #[sql_name = "type"]
        type_ -> Text,
        amount -> Numeric,
        fee -> Numeric,
        balance_before -> Numeric,
        balance_after -> Numeric,
        status -> Text,
        tx_hash -> Text,
        description -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        network -> Nullable<Text>,
        from_address -> Nullable<Text>,
        to_address -> Nullable<Text>,
        confirmations -> Nullable<Int4>,
        required_confirmations -> Nullable<Int4>,
        block_number -> Nullable<Int8>,
        gas_price -> Nullable<Numeric>,
        gas_used -> Nullable<Int8>,
        raw -> Nullable<Text>,
        hold -> Bool,
        hold_id -> Nullable<Int8>,
        chain_tx_hash -> Nullable<Text>,
        status_reason -> Nullable<Text>,
        counterpart_id -> Nullable<Int8>,
        reverses_id -> Nullable<Int8>,
        network_fee -> Nullable<Numeric>,
        reference -> Nullable<Text>,
        metadata -> Nullable<Jsonb>,
        restores_id -> Nullable<Int8>,
        settles_hold_id -> Nullable<Int8>,
    }
}

diesel::table! {
    wallets (id) {
        id -> Int8,
        user_id -> Text,
        currency -> Text,
        balance -> Numeric,
        locked_balance -> Numeric,
        network -> Nullable<Text>,
        address -> Nullable<Text>,
        derivation_path -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        credit_limit -> Numeric,
        held_balance -> Numeric,
    }
}

diesel::table! {
    webhook_attempts (id) {
        id -> Int8,
        delivery_id -> Int8,
        attempted_at -> Timestamptz,
        latency_ms -> Int4,
        status_code -> Nullable<Int4>,
        error -> Nullable<Text>,
        succeeded -> Bool,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Int8,
        endpoint_id -> Int8,
        event_id -> Int8,
        sequence -> Int8,
        event_type -> Text,
        body -> Text,
        status -> Text,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        last_status_code -> Nullable<Int4>,
        last_error -> Nullable<Text>,
        redelivery_of -> Nullable<Int8>,
        created_at -> Timestamptz,
        completed_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    webhook_endpoints (id) {
        id -> Int8,
        url -> Text,
        event_types -> Array<Nullable<Text>>,
        wallet_ids -> Nullable<Array<Nullable<Int8>>>,
        description -> Nullable<Text>,
        secret -> Text,
        previous_secret -> Nullable<Text>,
        previous_secret_until -> Nullable<Timestamptz>,
        status -> Text,
        disabled_reason -> Nullable<Text>,
        position -> Int8,
        failing_since -> Nullable<Timestamptz>,
        lease_owner -> Nullable<Text>,
        lease_until -> Nullable<Timestamptz>,
        created_by -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    withdrawal_attempts (id) {
        id -> Int8,
        transaction_id -> Int8,
        network -> Text,
        from_address -> Text,
        nonce -> Int8,
        replaces -> Nullable<Int8>,
        hash -> Text,
        raw -> Text,
        max_fee_per_gas -> Numeric,
        max_priority_fee_per_gas -> Numeric,
        gas_limit -> Int8,
        locked_fee -> Numeric,
        signed_at_height -> Int8,
        created_at -> Timestamptz,
        refused -> Nullable<Text>,
    }
}

diesel::joinable!(balance_alerts -> wallets (wallet_id));
diesel::joinable!(credit_limit_changes -> wallets (wallet_id));
diesel::joinable!(gas_fundings -> currencies (currency));
diesel::joinable!(gas_fundings -> wallets (wallet_id));
diesel::joinable!(ledger_accounts -> currencies (currency));
diesel::joinable!(legacy_token_deposits -> transactions (hold_id));
diesel::joinable!(reconciliations -> wallets (wallet_id));
diesel::joinable!(sim_blocks -> sim_chains (network));
diesel::joinable!(sim_failing_addresses -> sim_chains (network));
diesel::joinable!(sim_transfers -> sim_chains (network));
diesel::joinable!(transactions -> holds (settles_hold_id));
diesel::joinable!(transactions -> wallets (wallet_id));
diesel::joinable!(wallets -> currencies (currency));
diesel::joinable!(webhook_attempts -> webhook_deliveries (delivery_id));
diesel::joinable!(webhook_deliveries -> webhook_endpoints (endpoint_id));
diesel::joinable!(withdrawal_attempts -> transactions (transaction_id));

diesel::allow_tables_to_appear_in_same_query!(
    balance_alerts,
    chain_backends,
    chain_blocks,
    chain_nonces,
    chain_reorgs,
    chain_scan_cursors,
    credit_limit_changes,
    currencies,
    custody_fingerprint,
    event_runs,
    events,
    gas_fundings,
    hd_indexes,
    hold_events,
    holds,
    ledger_accounts,
    ledger_postings,
    legacy_token_deposits,
    reconciliations,
    scheduled_jobs,
    sim_blocks,
    sim_chains,
    sim_failing_addresses,
    sim_transfers,
    stream_positions,
    token_revocations,
    transactions,
    wallets,
    webhook_attempts,
    webhook_deliveries,
    webhook_endpoints,
    withdrawal_attempts,
);
