//! The JSON an event is sent as, to webhook endpoints and to the stream. It follows the
//! Standard Webhooks payload shape — `{"type", "timestamp", "data"}` — and names objects by
//! the API's global ids, so a consumer can look anything up through the API. Amounts are
//! decimal strings, as in the API.

use serde_json::{Value, json};

use super::{AlertDirection, Notice, Payload};
use crate::global_id::{NodeType, encode};
use crate::ledger::{JournalEntry, Reconciliation, Wallet};

/// The event's stable id: the same in the API, as `Webhook-Id` and as `Nats-Msg-Id`.
pub fn event_id(notice: &Notice) -> String {
    encode(NodeType::Event, notice.id)
}

/// The body of `notice`.
pub fn render(notice: &Notice) -> Value {
    let mut data = json!({
        "id": event_id(notice),
        "sequence": notice.sequence.to_string(),
        "type": notice.kind.as_str(),
        "occurredAt": notice.occurred_at,
        "wallet": Value::Null,
    });
    let wallet_id = notice.wallet_id.map(|id| encode(NodeType::Wallet, id));
    data["wallet"] = wallet_id.map_or(Value::Null, |id| json!({ "id": id }));
    match &notice.payload {
        Payload::Transaction(e) => data["transaction"] = transaction(e),
        Payload::Wallet(w) => data["wallet"] = wallet(w),
        Payload::Reconciliation(r) => data["reconciliation"] = reconciliation(r),
        Payload::Hold(h) => {
            data["hold"] = json!({
                "id": encode(NodeType::Hold, h.id),
                "toWallet": h.to_wallet_id.map(|w| encode(NodeType::Wallet, w)),
                "amount": h.amount,
                "captured": h.captured,
                "released": h.released,
                "remaining": h.remaining(),
                "status": h.status.as_str(),
                "expiresAt": h.expires_at,
                "reference": h.reference,
                "metadata": h.metadata,
            })
        }
        Payload::Alert(alert, w) => {
            data["wallet"] = wallet(w);
            data["alert"] = json!({
                "id": encode(NodeType::BalanceAlert, alert.alert_id),
                "direction": match alert.direction {
                    AlertDirection::Below => "BELOW",
                    AlertDirection::Above => "ABOVE",
                },
                "threshold": alert.threshold,
                "availableBalance": alert.available,
            })
        }
        Payload::Endpoint(e) => {
            data["webhookEndpoint"] = json!({
                "id": encode(NodeType::WebhookEndpoint, e.endpoint_id),
                "url": e.url,
                "reason": e.reason,
            })
        }
    }
    json!({
        "type": notice.kind.as_str(),
        "timestamp": notice.occurred_at,
        "data": data,
    })
}

fn wallet(w: &Wallet) -> Value {
    json!({
        "id": encode(NodeType::Wallet, w.id),
        "userId": w.user_id,
        "currency": w.currency,
        "balance": w.balance,
        "lockedBalance": w.locked_balance,
        "heldBalance": w.held_balance,
        "creditLimit": w.credit_limit,
        "availableBalance": w.available_balance(),
    })
}

fn transaction(e: &JournalEntry) -> Value {
    json!({
        "id": encode(NodeType::Transaction, e.id),
        "wallet": encode(NodeType::Wallet, e.wallet_id),
        "type": e.kind.as_str(),
        "amount": e.amount,
        "fee": e.fee,
        "balanceBefore": e.balance_before,
        "balanceAfter": e.balance_after,
        "status": e.status.as_str(),
        "confirmations": e.confirmations,
        "chainTxHash": e.chain_tx_hash,
        "reference": e.reference,
        "metadata": e.metadata,
        "counterpart": e.counterpart_id.map(|id| encode(NodeType::Transaction, id)),
        "reverses": e.reverses_id.map(|id| encode(NodeType::Transaction, id)),
        "settlesHold": e.settles_hold_id.map(|id| encode(NodeType::Hold, id)),
        "createdAt": e.created_at,
    })
}

fn reconciliation(r: &Reconciliation) -> Value {
    json!({
        "id": encode(NodeType::Reconciliation, r.id),
        "status": r.status.as_str(),
        "source": r.source.as_str(),
        "systemBalance": r.system_balance,
        "externalBalance": r.external_balance,
        "difference": r.difference,
        "createdAt": r.created_at,
    })
}
