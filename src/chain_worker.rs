//! The chain worker every process runs: signs and broadcasts withdrawals, follows them
//! on chain, and watches for deposits. All of its steps are safe to run in several
//! processes at once and to repeat after a crash (see `ledger::chain_withdrawal` and
//! `ledger::chain_deposit`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::chain::Chain;
use crate::custody::Custody;
use crate::db::PgPool;
use crate::ledger::chain_deposit::{self, ScanReport};
use crate::ledger::chain_withdrawal::{self, AdvanceReport};
use crate::ledger::node_withdrawal;
use crate::ledger::{CurrencyKind, CurrencyRegistry, LedgerError};
use crate::task::AbortOnDrop;

#[derive(Clone)]
pub struct ChainWorker {
    pub pool: PgPool,
    pub currencies: Arc<CurrencyRegistry>,
    pub chain: Arc<dyn Chain>,
    pub custody: Arc<Custody>,
}

/// What one [`ChainWorker::pass`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub signed: usize,
    /// Withdrawals that could not be signed this pass (tried again next pass).
    pub sign_errors: usize,
    pub broadcast: usize,
    pub withdrawals: AdvanceReport,
    pub deposits: Vec<(String, ScanReport)>,
}

impl ChainWorker {
    /// Networks with an enabled crypto currency.
    fn networks(&self) -> BTreeSet<String> {
        self.currencies
            .all()
            .filter(|c| c.kind == CurrencyKind::Crypto && c.enabled)
            .filter_map(|c| c.network.clone())
            .collect()
    }

    /// Signs every waiting withdrawal and broadcasts it, follows those on chain, and
    /// scans each network for deposits.
    pub async fn pass(&self) -> Result<PassReport, LedgerError> {
        let mut report = PassReport::default();
        let mut conn = self.pool.get().await?;
        // Each stage runs even if one before it failed (the first error is returned).
        let mut failure = None;
        // Withdrawals on networks served by a node of an account-based chain follow
        // `node_withdrawal` (nonces, fees known once mined); the others `chain_withdrawal`.
        let by_node: Vec<String> = self
            .networks()
            .into_iter()
            .filter(|n| self.chain.accounts(n).is_some())
            .collect();
        self.sign_and_broadcast(&mut conn, &by_node, &mut report, &mut failure)
            .await;
        match chain_withdrawal::advance(&mut conn, self.chain.as_ref(), &by_node).await {
            Ok(advanced) => report.withdrawals = advanced,
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
        if !by_node.is_empty() {
            match node_withdrawal::advance(
                &mut conn,
                &self.currencies,
                &self.custody,
                self.chain.as_ref(),
                &by_node,
            )
            .await
            {
                Ok(advanced) => report.withdrawals.add(advanced),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        // The scans take connections of their own.
        drop(conn);
        for network in self.networks() {
            match chain_deposit::scan(&self.pool, &self.currencies, self.chain.as_ref(), &network)
                .await
            {
                Ok(scan) => {
                    if scan.parked > 0 {
                        metrics::counter!("wallet_deposits_parked_total", "network" => network.clone())
                            .increment(scan.parked as u64);
                    }
                    if scan.errors > 0 {
                        metrics::counter!("wallet_deposit_errors_total", "network" => network.clone())
                            .increment(scan.errors as u64);
                    }
                    report.deposits.push((network, scan))
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(report)
    }

    /// Signs every waiting withdrawal once, in id order, and broadcasts it; one that fails
    /// does not stop the others (`by_node`: the networks whose withdrawals go through a
    /// node's nonces).
    async fn sign_and_broadcast(
        &self,
        conn: &mut crate::db::PooledConn,
        by_node: &[String],
        report: &mut PassReport,
        failure: &mut Option<LedgerError>,
    ) {
        for node_flow in [false, true] {
            if node_flow && by_node.is_empty() {
                continue;
            }
            let mut after = 0;
            loop {
                let before = after;
                let signing = if node_flow {
                    node_withdrawal::sign_next(
                        conn,
                        &self.currencies,
                        &self.custody,
                        self.chain.as_ref(),
                        by_node,
                        &mut after,
                    )
                    .await
                } else {
                    chain_withdrawal::sign_next(conn, &self.custody, by_node, &mut after).await
                };
                match signing {
                    Ok(Some(signed)) => {
                        report.signed += 1;
                        // Stored before this: if the broadcast fails, the next pass sends
                        // the same bytes.
                        match self.chain.broadcast(&signed).await {
                            Ok(_) => report.broadcast += 1,
                            Err(e) => {
                                tracing::warn!(hash = signed.hash, error = %e, "broadcast failed")
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = ?e, withdrawal = after, "could not sign a withdrawal");
                        report.sign_errors += 1;
                        failure.get_or_insert(e);
                        if after == before {
                            // Failed before claiming one: nothing to skip past.
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Runs [`ChainWorker::pass`] every `interval`, and at once when `wake` is notified
    /// (a withdrawal requested or blocks mined in this process), until dropped.
    pub fn spawn(self, interval: Duration, wake: Arc<Notify>) -> AbortOnDrop<()> {
        AbortOnDrop::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = wake.notified() => {}
                }
                match self.pass().await {
                    Ok(report) if report.signed + report.withdrawals.completed > 0 => {
                        tracing::info!(?report, "chain worker pass")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = ?e, "chain worker pass failed"),
                }
            }
        })
    }
}
