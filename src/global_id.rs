//! Global object ids: the opaque ids the API gives every object (Relay's global ids),
//! also used to name objects in webhook bodies and stream messages.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The kinds of object that have a global id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeType {
    Wallet,
    Transaction,
    Reconciliation,
    GasFunding,
    Hold,
    Event,
    WebhookEndpoint,
    WebhookDelivery,
    BalanceAlert,
}

impl NodeType {
    pub fn name(self) -> &'static str {
        match self {
            NodeType::Wallet => "Wallet",
            NodeType::Transaction => "Transaction",
            NodeType::Reconciliation => "Reconciliation",
            NodeType::GasFunding => "GasFunding",
            NodeType::Hold => "Hold",
            NodeType::Event => "Event",
            NodeType::WebhookEndpoint => "WebhookEndpoint",
            NodeType::WebhookDelivery => "WebhookDelivery",
            NodeType::BalanceAlert => "BalanceAlert",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "Wallet" => NodeType::Wallet,
            "Transaction" => NodeType::Transaction,
            "Reconciliation" => NodeType::Reconciliation,
            "GasFunding" => NodeType::GasFunding,
            "Hold" => NodeType::Hold,
            "Event" => NodeType::Event,
            "WebhookEndpoint" => NodeType::WebhookEndpoint,
            "WebhookDelivery" => NodeType::WebhookDelivery,
            "BalanceAlert" => NodeType::BalanceAlert,
            _ => return None,
        })
    }
}

/// The global id of object `id` of `kind`.
pub fn encode(kind: NodeType, id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{id}", kind.name()))
}
