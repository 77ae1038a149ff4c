//! Loading what feed events name: one query per kind of subject for a whole page, paired
//! up in the page's order, with the state each event recorded laid over the current row
//! (a journal row's status then, a hold's progress then, the wallet's balances then).

use std::collections::HashMap;
use std::str::FromStr;

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use super::feed::EventRow;
use super::{AlertDirection, AlertFired, EndpointDisabled, EventType, Notice, Payload};
use crate::ledger::{JournalEntry, LedgerError, Reconciliation, Wallet, wallet};
use crate::schema::{balance_alerts, reconciliations, transactions, webhook_endpoints};

/// Loads what the events name and pairs them up, in the events' order. Events whose
/// subject is gone (or of an unknown type) are skipped and logged.
pub async fn load_notices(
    conn: &mut AsyncPgConnection,
    rows: &[EventRow],
) -> Result<Vec<Notice>, LedgerError> {
    let ids = |topic: &str| -> Vec<i64> {
        rows.iter()
            .filter(|r| r.topic == topic)
            .map(|r| r.subject_id)
            .collect()
    };
    let (tx_ids, rec_ids, hold_ids) = (ids("TRANSACTION"), ids("RECONCILIATION"), ids("HOLD"));
    let (alert_ids, endpoint_ids) = (ids("ALERT"), ids("WEBHOOK_ENDPOINT"));
    let wallet_ids: Vec<i64> = rows
        .iter()
        .filter(|r| r.topic == "WALLET" || r.topic == "ALERT")
        .filter_map(|r| r.wallet_id)
        .collect();

    let mut holds: HashMap<i64, crate::ledger::hold::Hold> = HashMap::new();
    if !hold_ids.is_empty() {
        let loaded = crate::ledger::hold::holds_by_ids(conn, &hold_ids).await?;
        holds.extend(loaded.into_iter().map(|h| (h.id, h)));
    }
    let mut entries: HashMap<i64, JournalEntry> = HashMap::new();
    if !tx_ids.is_empty() {
        let loaded: Vec<JournalEntry> = transactions::table
            .filter(transactions::id.eq_any(&tx_ids))
            .select(JournalEntry::as_select())
            .load(conn)
            .await?;
        entries.extend(loaded.into_iter().map(|e| (e.id, e)));
    }
    let mut wallets: HashMap<i64, Wallet> = HashMap::new();
    if !wallet_ids.is_empty() {
        let loaded = wallet::wallets_by_ids(conn, &wallet_ids).await?;
        wallets.extend(loaded.into_iter().map(|w| (w.id, w)));
    }
    let mut recs: HashMap<i64, Reconciliation> = HashMap::new();
    if !rec_ids.is_empty() {
        let loaded: Vec<Reconciliation> = reconciliations::table
            .filter(reconciliations::id.eq_any(&rec_ids))
            .select(Reconciliation::as_select())
            .load(conn)
            .await?;
        recs.extend(loaded.into_iter().map(|r| (r.id, r)));
    }
    let mut alerts: HashMap<i64, (Option<Decimal>, Option<Decimal>)> = HashMap::new();
    if !alert_ids.is_empty() {
        let loaded: Vec<(i64, Option<Decimal>, Option<Decimal>)> = balance_alerts::table
            .filter(balance_alerts::id.eq_any(&alert_ids))
            .select((
                balance_alerts::id,
                balance_alerts::below,
                balance_alerts::above,
            ))
            .load(conn)
            .await?;
        alerts.extend(loaded.into_iter().map(|(id, b, a)| (id, (b, a))));
    }
    let mut endpoints: HashMap<i64, String> = HashMap::new();
    if !endpoint_ids.is_empty() {
        let loaded: Vec<(i64, String)> = webhook_endpoints::table
            .filter(webhook_endpoints::id.eq_any(&endpoint_ids))
            .select((webhook_endpoints::id, webhook_endpoints::url))
            .load(conn)
            .await?;
        endpoints.extend(loaded);
    }

    // The wallet as this event's change left it: later changes have their own events.
    let wallet_then = |row: &EventRow| {
        row.wallet_id.and_then(|id| wallets.get(&id)).map(|w| {
            let mut w = w.clone();
            w.balance = row.balance.unwrap_or(w.balance);
            w.locked_balance = row.locked_balance.unwrap_or(w.locked_balance);
            w.held_balance = row.held_balance.unwrap_or(w.held_balance);
            w.credit_limit = row.credit_limit.unwrap_or(w.credit_limit);
            w
        })
    };

    let mut notices = Vec::with_capacity(rows.len());
    for row in rows {
        let payload = match row.topic.as_str() {
            "TRANSACTION" => entries.get(&row.subject_id).map(|e| {
                let mut e = e.clone();
                if let Some(status) = row.status.as_deref().and_then(|s| s.parse().ok()) {
                    e.status = status;
                }
                if row.confirmations.is_some() {
                    e.confirmations = row.confirmations;
                }
                Payload::Transaction(Box::new(e))
            }),
            "WALLET" => wallet_then(row).map(Payload::Wallet),
            "HOLD" => holds.get(&row.subject_id).map(|h| {
                let mut h = h.clone();
                if let Some(status) = row.status.as_deref().and_then(|s| s.parse().ok()) {
                    h.status = status;
                }
                h.captured = row.captured.unwrap_or(h.captured);
                h.released = row.released.unwrap_or(h.released);
                Payload::Hold(h)
            }),
            "RECONCILIATION" => recs
                .get(&row.subject_id)
                .cloned()
                .map(Payload::Reconciliation),
            "ALERT" => match (alerts.get(&row.subject_id), wallet_then(row)) {
                (Some((below, above)), Some(w)) => {
                    let (direction, threshold) = match row.status.as_deref() {
                        Some("BELOW") => (AlertDirection::Below, *below),
                        _ => (AlertDirection::Above, *above),
                    };
                    threshold.map(|threshold| {
                        Payload::Alert(
                            AlertFired {
                                alert_id: row.subject_id,
                                direction,
                                threshold,
                                available: w.available_balance(),
                            },
                            w,
                        )
                    })
                }
                _ => None,
            },
            "WEBHOOK_ENDPOINT" => endpoints.get(&row.subject_id).map(|url| {
                Payload::Endpoint(EndpointDisabled {
                    endpoint_id: row.subject_id,
                    url: url.clone(),
                    reason: row.status.clone().unwrap_or_default(),
                })
            }),
            _ => None,
        };
        let kind = EventType::from_str(&row.kind);
        match (payload, kind) {
            (Some(payload), Ok(kind)) => notices.push(Notice {
                id: row.id,
                sequence: row.sequence,
                kind,
                occurred_at: row.created_at,
                wallet_id: row.wallet_id,
                user_id: row.user_id.clone(),
                payload,
            }),
            _ => tracing::warn!(event = row.id, topic = %row.topic, "event names a missing row"),
        }
    }
    Ok(notices)
}
