//! The chain worker every process runs: signs and broadcasts withdrawals, follows them
//! on chain, and watches for deposits. All of its steps are safe to run in several
//! processes at once and to repeat after a crash (see `crate::chain::withdrawal` and
//! `crate::chain::deposit`).
//!
//! Before any work on a network, its backend is asked to verify itself ([`Chain::verify`]:
//! a node proves it still serves the chain it was verified on), and must be the backend
//! the database says serves the network (`chain::backends`). A network that does not —
//! its node down, not verified yet, serving another chain, or taken over by another
//! backend — is left alone for the pass: no deposit is read from it, no withdrawal signed
//! or sent for it, and nothing is recorded against it; the other networks are served as
//! usual. Withdrawals through a node that a reorganisation removed after they completed
//! are followed too (`crate::chain::reorg`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::chain::deposit::{self, ScanReport};
use crate::chain::gas_funding::{self, FundingReport};
use crate::chain::node_withdrawal;
use crate::chain::reorg;
use crate::chain::withdrawal::{self, AdvanceReport};
use crate::chain::{Chain, backends};
use crate::custody::Custody;
use crate::db::PgPool;
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
    /// Gas fundings followed (`crate::chain::gas_funding`).
    pub gas_fundings: FundingReport,
    /// Withdrawals not signed because the network's base fee is above the fee cap (they
    /// wait, PENDING, with their lock).
    pub fee_capped: Vec<i64>,
    /// Networks left alone this pass: their backend could not be verified.
    pub unavailable: Vec<String>,
}

impl PassReport {
    /// Every withdrawal held back by the fee cap this pass (not signed, or not replaced).
    pub fn held_at_fee_cap(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .fee_capped
            .iter()
            .chain(&self.withdrawals.fee_capped)
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
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
        // Each stage runs even if one before it failed (the first error is returned).
        let mut failure = None;
        let mut usable = Vec::new();
        let mut verified = Vec::new();
        for network in self.networks() {
            match self.chain.verify(&network).await {
                Ok(()) => verified.push(network),
                Err(e) => {
                    failure.get_or_insert(e.into());
                    report.unavailable.push(network);
                }
            }
        }
        let mut conn = self.pool.get().await?;
        for network in verified {
            match self.serves(&mut conn, &network).await {
                Ok(()) => usable.push(network),
                Err(e) => {
                    failure.get_or_insert(e);
                    report.unavailable.push(network);
                }
            }
        }
        // Withdrawals on networks served by a node of an account-based chain follow
        // `chain::node_withdrawal` (nonces, fees known once mined); the others `chain::withdrawal`.
        // Neither flow touches a network left alone this pass.
        let by_node: Vec<String> = usable
            .iter()
            .filter(|n| self.chain.accounts(n).is_some())
            .cloned()
            .collect();
        let not_simple: Vec<String> = self
            .networks()
            .into_iter()
            .filter(|n| self.chain.accounts(n).is_some() || report.unavailable.contains(n))
            .collect();
        self.sign_and_broadcast(&mut conn, &by_node, &not_simple, &mut report, &mut failure)
            .await;
        match withdrawal::advance(&mut conn, self.chain.as_ref(), &not_simple).await {
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
            metrics::gauge!("wallet_withdrawals_fee_capped")
                .set(report.held_at_fee_cap().len() as f64);
            // Completed withdrawals a reorganisation removed (see `chain::reorg`).
            for network in &by_node {
                match reorg::follow_withdrawals(
                    &mut conn,
                    &self.currencies,
                    self.chain.as_ref(),
                    network,
                )
                .await
                {
                    Ok(completed) => report.withdrawals.completed += completed,
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
            }
        }
        // Gas fundings seen by earlier scans: confirmed and posted, or expected again.
        match gas_funding::advance(&mut conn, self.chain.as_ref(), &usable).await {
            Ok(followed) => report.gas_fundings = followed,
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
        // The scans take connections of their own.
        drop(conn);
        for network in usable {
            match deposit::scan(&self.pool, &self.currencies, self.chain.as_ref(), &network).await {
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

    /// Whether this process's backend of `network` is the one serving it (another
    /// process may have taken it over while the network's wallets had no movements — see
    /// `chain::backends`): if not, the network is left alone.
    async fn serves(
        &self,
        conn: &mut crate::db::PooledConn,
        network: &str,
    ) -> Result<(), LedgerError> {
        let backend = self.chain.backend(network)?;
        if !backends::serves(conn, network, &backend).await? {
            return Err(LedgerError::ChainUnavailable(format!(
                "{network} is served by another backend now ({}): this process leaves it alone",
                backends::claimed(conn, network)
                    .await?
                    .map(|b| backends::describe(&b))
                    .unwrap_or_default()
            )));
        }
        Ok(())
    }

    /// Signs every waiting withdrawal once, in id order, and broadcasts it; one that fails
    /// does not stop the others (`by_node`: the networks whose withdrawals go through a
    /// node's nonces; `not_simple`: those whose withdrawals the simple flow leaves alone).
    async fn sign_and_broadcast(
        &self,
        conn: &mut crate::db::PooledConn,
        by_node: &[String],
        not_simple: &[String],
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
                        &mut report.fee_capped,
                    )
                    .await
                } else {
                    withdrawal::sign_next(conn, &self.custody, not_simple, &mut after).await
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
            // What the last pass reported, so that a state lasting many passes (a node
            // down, withdrawals held at the fee cap) is logged when it changes, not every
            // pass.
            let mut last_failure = String::new();
            let mut last_capped = Vec::new();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = wake.notified() => {}
                }
                let report = match self.pass().await {
                    Ok(report) => {
                        last_failure.clear();
                        report
                    }
                    Err(e) => {
                        let text = format!("{e:?}");
                        if text != last_failure {
                            tracing::warn!(error = %text, "chain worker pass failed");
                            last_failure = text;
                        }
                        continue;
                    }
                };
                if report.signed + report.withdrawals.completed > 0 {
                    tracing::info!(?report, "chain worker pass");
                }
                let capped = report.held_at_fee_cap();
                if capped != last_capped {
                    if capped.is_empty() {
                        tracing::info!("no withdrawal waits for fees under the cap any more");
                    } else {
                        tracing::warn!(
                            withdrawals = ?capped,
                            "withdrawals wait: the network asks more per gas than \
                             WALLET_ETHEREUM_MAX_FEE_PER_GAS_GWEI allows; they go on when \
                             fees fall or the cap is raised"
                        );
                    }
                    last_capped = capped;
                }
            }
        })
    }
}
