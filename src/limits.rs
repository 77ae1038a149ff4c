//! Abuse limits outside the GraphQL executor: connections (in total and per client
//! address), requests in flight, websockets, mutation rates.
//!
//! Each limit answers with a clear refusal (503 for connections over a cap and for
//! requests over the in-flight cap, websocket close code 1013 "try again later",
//! `RATE_LIMITED` with `Retry-After` for mutations) and never slows anyone else down.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Viewer;

/// Limits of the HTTP server.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Time a client has to send a request's headers; also how long an idle keep-alive
    /// connection is kept between requests (HTTP/1 and HTTP/2 alike).
    pub header_timeout: Duration,
    /// Time from accepting a connection to its first complete request head, whatever the
    /// protocol (an HTTP/2 client's preface and settings included).
    pub first_request_timeout: Duration,
    /// Connections open at once (websockets included, for as long as they are open).
    pub max_connections: usize,
    /// Connections open at once from one client address (an IPv6 client: its /64).
    pub max_connections_per_ip: usize,
    /// GraphQL requests over HTTP executing at once (counted once their body has
    /// arrived); more are refused with 503 at once.
    pub max_in_flight: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            first_request_timeout: Duration::from_secs(5),
            max_connections: 1024,
            max_connections_per_ip: 64,
            max_in_flight: 256,
        }
    }
}

/// Limits of websocket connections.
#[derive(Clone, Copy, Debug)]
pub struct WsLimits {
    /// Operations one connection may run at once.
    pub max_subscriptions: usize,
    /// Operations one user may run at once over all their connections.
    pub max_subscriptions_per_user: usize,
    /// Connections open at once, in total.
    pub max_connections: usize,
    /// Connections open at once that have not completed `connection_init`.
    pub max_unauthenticated: usize,
    /// Connections one user may have open at once.
    pub max_per_user: usize,
    /// Time a client has to send `connection_init`.
    pub init_timeout: Duration,
    /// Time a peer has to answer a ping.
    pub pong_timeout: Duration,
    /// Time one write to the peer (the messages queued for it, flushed) may take.
    pub send_timeout: Duration,
}

impl Default for WsLimits {
    fn default() -> Self {
        WsLimits {
            max_subscriptions: 32,
            max_subscriptions_per_user: 64,
            max_connections: 512,
            max_unauthenticated: 64,
            max_per_user: 8,
            init_timeout: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(10),
        }
    }
}

/// Mutation rates and read budgets per token subject.
#[derive(Clone, Copy, Debug)]
pub struct RateLimits {
    /// Sustained mutations per second of a user (0: no limit).
    pub user_per_sec: u32,
    /// Mutations a user may send at once above the sustained rate.
    pub user_burst: u32,
    /// Sustained mutations per second of an operator (0: no limit). On by default: a
    /// leaked operator token must not create money at the database's full speed.
    pub operator_per_sec: u32,
    /// Mutations an operator may send at once above the sustained rate (the back office
    /// batches deposits).
    pub operator_burst: u32,
    /// The cost of queries and subscriptions (their complexity, as limited per operation)
    /// a user may spend per second, sustained (0: no limit). Anonymous callers share one
    /// budget of this size.
    pub user_query_cost_per_sec: u32,
    /// Cost a user may spend at once above the sustained rate (at least the most one
    /// operation may cost).
    pub user_query_cost_burst: u32,
    /// The same for an operator (0: no limit; the burst is ten seconds' worth).
    pub operator_query_cost_per_sec: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            user_per_sec: 10,
            user_burst: 50,
            operator_per_sec: 100,
            operator_burst: 500,
            user_query_cost_per_sec: 10_000,
            user_query_cost_burst: 50_000,
            operator_query_cost_per_sec: 100_000,
        }
    }
}

/// How many keys a limiter keeps before forgetting the ones that are back to full quota.
const RETAIN_KEYS: usize = 10_000;

/// A budget per caller and role, refilled at a steady rate.
struct CallerBudget {
    users: Option<DefaultKeyedRateLimiter<String>>,
    operators: Option<DefaultKeyedRateLimiter<String>>,
}

impl CallerBudget {
    /// `(per second, burst)` for users and for operators; a rate of 0 is no limit.
    fn new(users: (u32, u32), operators: (u32, u32)) -> Self {
        let keyed = |(per_sec, burst): (u32, u32)| {
            let per_sec = NonZeroU32::new(per_sec)?;
            let burst = NonZeroU32::new(burst).unwrap_or(per_sec).max(per_sec);
            Some(RateLimiter::keyed(
                Quota::per_second(per_sec).allow_burst(burst),
            ))
        };
        CallerBudget {
            users: keyed(users),
            operators: keyed(operators),
        }
    }

    /// Takes `amount` from the caller's budget (anonymous callers share one), or says how
    /// long to wait.
    fn take(&self, caller: Option<&Viewer>, amount: u32) -> Result<(), Duration> {
        let limiter = match caller.is_some_and(Viewer::is_operator) {
            true => &self.operators,
            false => &self.users,
        };
        let (Some(limiter), Some(amount)) = (limiter, NonZeroU32::new(amount)) else {
            return Ok(());
        };
        if limiter.len() > RETAIN_KEYS {
            limiter.retain_recent();
        }
        // A subject is never empty (tokens are refused without one): "" is anonymous.
        let key = caller.map(|v| v.user_id.clone()).unwrap_or_default();
        match limiter.check_key_n(&key, amount) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(DefaultClock::default().now())),
            // More at once than the burst allows: never possible, say so with a second.
            Err(_) => Err(Duration::from_secs(1)),
        }
    }
}

/// Counts mutations (root mutation fields) per caller.
pub struct MutationLimiter(CallerBudget);

impl MutationLimiter {
    pub fn new(limits: RateLimits) -> Self {
        MutationLimiter(CallerBudget::new(
            (limits.user_per_sec, limits.user_burst),
            (limits.operator_per_sec, limits.operator_burst),
        ))
    }

    /// Takes `count` mutations from the caller's quota, or says how long to wait.
    pub fn check(&self, viewer: &Viewer, count: u32) -> Result<(), Duration> {
        self.0.take(Some(viewer), count)
    }
}

/// Spends the cost of reads (queries and subscriptions) per caller: no caller can keep
/// the read pool busy for everyone else with operations each within the per-operation
/// limit.
pub struct QueryCostLimiter(CallerBudget);

impl QueryCostLimiter {
    /// `max_operation_cost` is the most one operation may cost: every burst allows at
    /// least that much, so any permitted operation can run once the budget is full.
    pub fn new(limits: RateLimits, max_operation_cost: usize) -> Self {
        let floor = u32::try_from(max_operation_cost).unwrap_or(u32::MAX);
        QueryCostLimiter(CallerBudget::new(
            (
                limits.user_query_cost_per_sec,
                limits.user_query_cost_burst.max(floor),
            ),
            (
                limits.operator_query_cost_per_sec,
                limits
                    .operator_query_cost_per_sec
                    .saturating_mul(10)
                    .max(floor),
            ),
        ))
    }

    /// Spends `cost` from the caller's budget, or says how long to wait.
    pub fn spend(&self, caller: Option<&Viewer>, cost: usize) -> Result<(), Duration> {
        self.0
            .take(caller, u32::try_from(cost.max(1)).unwrap_or(u32::MAX))
    }
}

/// Places counted per key (a user, a client address), each key up to a cap.
pub struct KeyedCaps<K: Eq + Hash + Clone> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    max: usize,
}

/// One place of a key; given back when dropped.
pub struct KeyedSlot<K: Eq + Hash + Clone> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Eq + Hash + Clone> KeyedCaps<K> {
    pub fn new(max: usize) -> Self {
        KeyedCaps {
            counts: Arc::default(),
            max,
        }
    }

    /// A place for `key`, if it has fewer than the cap.
    pub fn take(&self, key: &K) -> Option<KeyedSlot<K>> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key.clone()).or_default();
        if *n >= self.max {
            if *n == 0 {
                counts.remove(key);
            }
            return None;
        }
        *n += 1;
        Some(KeyedSlot {
            counts: self.counts.clone(),
            key: key.clone(),
        })
    }

    /// Places `key` holds now.
    pub fn count(&self, key: &K) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(key).copied().unwrap_or(0)
    }
}

impl<K: Eq + Hash + Clone> Drop for KeyedSlot<K> {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            // Keys without places are forgotten: the map holds only what is open.
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` are open.
    Total,
    /// `max_connections_per_ip` are open from this client's address.
    PerAddress,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Refused::Total => "total",
            Refused::PerAddress => "per_ip",
        }
    }
}

/// Connections open, in total and per client address.
pub struct ConnectionSlots {
    total: Arc<Semaphore>,
    per_address: KeyedCaps<IpAddr>,
}

/// A connection's places in the total and among its address's; given back when dropped
/// (it travels with the socket, into an upgraded websocket too).
pub struct ConnectionSlot {
    _total: OwnedSemaphorePermit,
    _address: KeyedSlot<IpAddr>,
}

impl ConnectionSlots {
    pub fn new(limits: &HttpLimits) -> Self {
        ConnectionSlots {
            total: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            per_address: KeyedCaps::new(limits.max_connections_per_ip.max(1)),
        }
    }

    /// Places for one more connection from `peer`, if both caps allow.
    pub fn admit(&self, peer: IpAddr) -> Result<ConnectionSlot, Refused> {
        let address = self
            .per_address
            .take(&client_key(peer))
            .ok_or(Refused::PerAddress)?;
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Total)?;
        Ok(ConnectionSlot {
            _total: total,
            _address: address,
        })
    }
}

/// The key a client address is counted under: an IPv4 address (mapped ones included) as
/// it is, an IPv6 address by its /64 (one subscriber's network: whoever has one address
/// has all of it).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// Websocket connections open: in total, not yet initialised, per user; and operations
/// running per user.
pub struct WsSlots {
    total: Arc<Semaphore>,
    unauthenticated: Arc<Semaphore>,
    per_user: KeyedCaps<String>,
    operations_per_user: KeyedCaps<String>,
}

/// A connection's place in the total; released when dropped.
pub struct WsSlot(#[allow(dead_code)] OwnedSemaphorePermit);

/// A connection's place among those not yet initialised; released when dropped (at
/// `connection_init`, or when the connection ends).
pub struct UnauthenticatedSlot(#[allow(dead_code)] OwnedSemaphorePermit);

/// A connection's place among its user's; released when dropped.
pub type UserSlot = KeyedSlot<String>;

/// An operation's place among its user's running operations; released when dropped.
pub type OperationSlot = KeyedSlot<String>;

/// Why a websocket upgrade was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsRefused {
    Total,
    Unauthenticated,
}

impl WsSlots {
    pub fn new(limits: WsLimits) -> Self {
        WsSlots {
            total: Arc::new(Semaphore::new(limits.max_connections)),
            unauthenticated: Arc::new(Semaphore::new(limits.max_unauthenticated)),
            per_user: KeyedCaps::new(limits.max_per_user),
            operations_per_user: KeyedCaps::new(limits.max_subscriptions_per_user),
        }
    }

    /// A place for one more connection, if the total allows.
    pub fn open(&self) -> Option<WsSlot> {
        self.total.clone().try_acquire_owned().ok().map(WsSlot)
    }

    /// Places for one more connection that has yet to authenticate: in the total and
    /// among the unauthenticated.
    pub fn open_unauthenticated(&self) -> Result<(WsSlot, UnauthenticatedSlot), WsRefused> {
        let waiting = self
            .unauthenticated
            .clone()
            .try_acquire_owned()
            .map_err(|_| WsRefused::Unauthenticated)?;
        let slot = self.open().ok_or(WsRefused::Total)?;
        Ok((slot, UnauthenticatedSlot(waiting)))
    }

    /// A place for one more connection of `user`, if their cap allows.
    pub fn for_user(&self, user: &str) -> Option<UserSlot> {
        self.per_user.take(&user.to_owned())
    }

    /// A place for one more running operation of `user`, if their cap allows.
    pub fn operation_of(&self, user: &str) -> Option<OperationSlot> {
        self.operations_per_user.take(&user.to_owned())
    }

    /// Operations `user` runs now over websockets.
    pub fn operations_of(&self, user: &str) -> usize {
        self.operations_per_user.count(&user.to_owned())
    }

    /// Connections open now.
    pub fn open_count(&self, limits: &WsLimits) -> usize {
        limits.max_connections - self.total.available_permits()
    }

    /// Connections open now that have not completed `connection_init`.
    pub fn unauthenticated_count(&self, limits: &WsLimits) -> usize {
        limits.max_unauthenticated - self.unauthenticated.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn viewer(id: &str, role: Role) -> Viewer {
        Viewer {
            user_id: id.into(),
            role,
        }
    }

    #[test]
    fn users_are_limited_separately_and_operators_only_when_set() {
        let limiter = MutationLimiter::new(RateLimits {
            user_per_sec: 1,
            user_burst: 3,
            operator_per_sec: 0,
            ..RateLimits::default()
        });
        let alice = viewer("alice", Role::User);
        assert!(limiter.check(&alice, 3).is_ok());
        let wait = limiter.check(&alice, 1).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(limiter.check(&viewer("bob", Role::User), 1).is_ok());
        let operator = viewer("back-office", Role::Operator);
        for _ in 0..1000 {
            assert!(limiter.check(&operator, 1).is_ok());
        }
    }

    #[test]
    fn read_cost_is_budgeted_per_caller_and_anonymous_callers_share_one() {
        let limits = RateLimits {
            user_query_cost_per_sec: 100,
            user_query_cost_burst: 1_000,
            operator_query_cost_per_sec: 0,
            ..RateLimits::default()
        };
        let budget = QueryCostLimiter::new(limits, 500);
        let alice = viewer("alice", Role::User);
        assert!(budget.spend(Some(&alice), 500).is_ok());
        assert!(budget.spend(Some(&alice), 500).is_ok());
        let wait = budget.spend(Some(&alice), 100).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(budget.spend(Some(&viewer("bob", Role::User)), 500).is_ok());
        assert!(budget.spend(None, 1_000).is_ok());
        assert!(budget.spend(None, 1).is_err());
        let operator = viewer("back-office", Role::Operator);
        for _ in 0..100 {
            assert!(budget.spend(Some(&operator), 5_000).is_ok());
        }
        // The burst is never below what one permitted operation costs.
        let tight = QueryCostLimiter::new(
            RateLimits {
                user_query_cost_burst: 1,
                ..limits
            },
            500,
        );
        assert!(tight.spend(Some(&alice), 500).is_ok());
    }

    #[test]
    fn operators_are_limited_by_default() {
        let limiter = MutationLimiter::new(RateLimits::default());
        let operator = viewer("back-office", Role::Operator);
        // The burst passes at once; the next one waits for the sustained rate.
        assert!(limiter.check(&operator, 500).is_ok());
        let wait = limiter.check(&operator, 1).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(10));
        // Each operator token subject has a quota of its own.
        assert!(
            limiter
                .check(&viewer("other-office", Role::Operator), 1)
                .is_ok()
        );
    }

    #[test]
    fn websocket_slots_are_released() {
        let limits = WsLimits {
            max_connections: 2,
            max_per_user: 1,
            ..WsLimits::default()
        };
        let slots = WsSlots::new(limits);
        let a = slots.open().unwrap();
        let _b = slots.open().unwrap();
        assert!(slots.open().is_none());
        drop(a);
        assert!(slots.open().is_some());
        let alice = slots.for_user("alice").unwrap();
        assert!(slots.for_user("alice").is_none());
        assert!(slots.for_user("bob").is_some());
        drop(alice);
        assert!(slots.for_user("alice").is_some());
    }

    #[test]
    fn unauthenticated_websockets_have_their_own_cap() {
        let limits = WsLimits {
            max_connections: 3,
            max_unauthenticated: 1,
            ..WsLimits::default()
        };
        let slots = WsSlots::new(limits);
        let (_slot, waiting) = slots.open_unauthenticated().unwrap();
        assert_eq!(
            slots.open_unauthenticated().err(),
            Some(WsRefused::Unauthenticated)
        );
        // Authenticated at the upgrade: only the total counts.
        assert!(slots.open().is_some());
        drop(waiting);
        assert!(slots.open_unauthenticated().is_ok());
        assert_eq!(slots.unauthenticated_count(&limits), 0);
    }

    #[test]
    fn connections_are_capped_per_address_and_in_total() {
        let slots = ConnectionSlots::new(&HttpLimits {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..HttpLimits::default()
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = slots.admit(a).unwrap();
        let _second = slots.admit(a).unwrap();
        assert_eq!(slots.admit(a).err(), Some(Refused::PerAddress));
        let _third = slots.admit(b).unwrap();
        assert_eq!(slots.admit(b).err(), Some(Refused::Total));
        drop(first);
        assert!(slots.admit(a).is_ok());
        // A refusal by the total gives the address's place back.
        assert_eq!(slots.per_address.count(&b), 1);
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(one), client_key(other));
        assert_ne!(client_key(one), client_key(elsewhere));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
