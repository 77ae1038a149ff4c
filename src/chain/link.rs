//! Whether a network served by a node may be used now. A node is used only once it has
//! been verified (its chain id, its tokens), and again only after it is verified anew
//! when its connection was lost: until then every call for that network is
//! [`ChainError::Unavailable`] without asking the node, and the rest of the service (fiat,
//! other networks) is not affected.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use super::ChainError;

/// The first wait before connecting again after a failure; doubled after each one.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two attempts to connect.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// The wait after `previous`: twice as long, at most [`RETRY_MAX`].
pub fn next_delay(previous: Duration) -> Duration {
    (previous * 2).min(RETRY_MAX)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Not verified yet, or its connection was lost: why.
    Connecting(String),
    /// Verified: the node serves the chain with this id.
    Ready(u64),
    /// The node answered, but not as configured (another chain, other token decimals):
    /// what is wrong. Never used until it answers as configured again.
    Refused(String),
}

pub struct Link {
    network: &'static str,
    state: Mutex<State>,
    /// Wakes the supervisor when a connection is lost (it verifies again at once).
    lost: Notify,
}

impl Link {
    pub fn new(network: &'static str) -> Self {
        let link = Link {
            network,
            state: Mutex::new(State::Connecting("not connected yet".into())),
            lost: Notify::new(),
        };
        link.publish(false);
        link
    }

    fn state(&self) -> State {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set(&self, state: State) {
        let ready = matches!(state, State::Ready(_));
        *self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = state;
        self.publish(ready);
    }

    fn publish(&self, ready: bool) {
        metrics::gauge!("wallet_chain_available", "network" => self.network).set(if ready {
            1.0
        } else {
            0.0
        });
    }

    /// The verified chain id, or why the network cannot be used now.
    pub fn ready(&self) -> Result<u64, ChainError> {
        match self.state() {
            State::Ready(chain_id) => Ok(chain_id),
            State::Connecting(why) => Err(ChainError::Unavailable(format!(
                "{} node not connected: {why}",
                self.network
            ))),
            State::Refused(why) => Err(ChainError::Unavailable(format!(
                "{} node refused: {why}",
                self.network
            ))),
        }
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.state(), State::Ready(_))
    }

    /// Verified: the network serves.
    pub fn connected(&self, chain_id: u64) {
        self.set(State::Ready(chain_id));
    }

    /// Not reached while connecting.
    pub fn unreachable(&self, why: &str) {
        self.set(State::Connecting(why.to_owned()));
    }

    /// The connection of a verified node failed: not used until verified again (the
    /// supervisor is woken to do that at once).
    pub fn lost(&self, why: &str) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if matches!(*state, State::Ready(_)) {
            *state = State::Connecting(format!("connection lost ({why})"));
            drop(state);
            self.publish(false);
            self.lost.notify_one();
        }
    }

    /// The node is not what the configuration says (the supervisor is woken, to verify
    /// it again with backoff until it is).
    pub fn refused(&self, why: &str) {
        self.set(State::Refused(why.to_owned()));
        self.lost.notify_one();
    }

    /// Resolves when a connection is lost or a node refused (or was since the last
    /// call).
    pub async fn lost_signal(&self) {
        self.lost.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_serves_only_while_verified() {
        let link = Link::new("ethereum");
        assert!(link.ready().is_err());
        link.connected(5);
        assert_eq!(link.ready().unwrap(), 5);
        link.lost("reset");
        let e = link.ready().unwrap_err().to_string();
        assert!(e.contains("connection lost (reset)"), "{e}");
        // Lost twice: still the first reason.
        link.lost("again");
        assert!(link.ready().unwrap_err().to_string().contains("reset"));
        link.connected(5);
        link.refused("chain id 7, not 5");
        assert!(link.ready().unwrap_err().to_string().contains("chain id 7"));
        // A refused node is not "lost": it stays refused.
        link.lost("reset");
        assert!(link.ready().unwrap_err().to_string().contains("refused"));
    }

    #[test]
    fn retries_back_off_to_a_minute() {
        let mut delay = RETRY_FIRST;
        let mut waits = vec![delay];
        for _ in 0..8 {
            delay = next_delay(delay);
            waits.push(delay);
        }
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
