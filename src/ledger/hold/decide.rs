//! The decisions of holds and credit limits, pure: what the flows read under the locks
//! goes in, a decision or a refusal comes out. Each function states its order of
//! refusals; the first that applies wins.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::{
    AuthorizeRequest, CaptureRequest, Hold, HoldEvent, HoldEventKind, HoldPolicy, HoldStatus,
    VoidRequest,
};
use crate::ledger::{Currency, CurrencyKind, CurrencyRegistry, LedgerError, Wallet, money};

/// What an authorisation does.
#[derive(Debug, PartialEq)]
pub enum Authorization {
    /// The key names this hold already.
    Replay,
    /// Reserve `amount` (at the currency's scale) until `expires_at`.
    New {
        amount: Decimal,
        expires_at: DateTime<Utc>,
    },
}

/// Decides `authorizeHold` on the locked `wallet` (visible to the caller), with the
/// locked target of a held transfer (`Some(None)`: named but not found), the hold its key
/// already names, at the database's `clock`:
///
/// | # | check | refusal |
/// |---|-------|---------|
/// | A0 | shape: key, description, reference, metadata, amount > 0 ([`AuthorizeRequest::check_shape`]) | `BadInput`, `InvalidAmount` |
/// | A1 | the wallet exists and the caller may see it (the lock) | `NotFound` |
/// | A2 | its key names a hold: the same request replays it, another is a conflict | `IdempotencyConflict` |
/// | A3 | a held transfer's target exists | `NotFound` |
/// | A4 | the target holds the same currency | `CurrencyMismatch` |
/// | A5 | the currency is fiat | `CurrencyNotSupported` |
/// | A6 | the amount fits the currency | `InvalidAmount` |
/// | A7 | `expiresAt` is ahead and within the longest hold | `BadInput` |
/// | A8 | the amount is available (balance + credit − holds − locks) | `InsufficientFunds` |
pub fn authorize(
    currencies: &CurrencyRegistry,
    policy: &HoldPolicy,
    wallet: &Wallet,
    target: Option<Option<&Wallet>>,
    existing: Option<&Hold>,
    request: &AuthorizeRequest,
    clock: DateTime<Utc>,
) -> Result<Authorization, LedgerError> {
    if let Some(hold) = existing {
        return match same_authorization(hold, request) {
            true => Ok(Authorization::Replay),
            false => Err(conflict(&request.key)),
        };
    }
    let target = match target {
        None => None,
        Some(None) => return Err(LedgerError::NotFound("wallet")),
        Some(Some(t)) => Some(t),
    };
    if let Some(t) = target
        && t.currency != wallet.currency
    {
        return Err(LedgerError::CurrencyMismatch(format!(
            "the wallet holds {} and the target {}",
            wallet.currency, t.currency
        )));
    }
    let currency = fiat(currencies, wallet)?;
    let amount = money::validate_amount(request.amount, currency)?;
    let expires_at = match request.expires_at {
        None => clock + policy.default_expiry,
        Some(at) if at <= clock => {
            return Err(LedgerError::BadInput(format!(
                "expiresAt {at} is not in the future"
            )));
        }
        Some(at) if at > clock + policy.max_expiry => {
            return Err(LedgerError::BadInput(format!(
                "expiresAt may be at most {} days ahead",
                policy.max_expiry.num_days()
            )));
        }
        Some(at) => at,
    };
    money::check_funds(wallet, amount)?;
    Ok(Authorization::New { amount, expires_at })
}

/// What a capture does.
#[derive(Debug, PartialEq)]
pub enum Capture {
    /// The key names this capture already.
    Replay,
    /// Move `amount` and give back `release` (a final capture's rest); `ends` when the
    /// hold is then fully accounted for.
    New {
        amount: Decimal,
        release: Decimal,
        ends: bool,
    },
}

/// Decides `captureHold` on the locked `hold` (visible to the caller), with the event its
/// key names on the hold, whether its key names another row of the hold's wallet's
/// journal, the locked target of a held transfer, at `clock`:
///
/// | # | check | refusal |
/// |---|-------|---------|
/// | C0 | shape: key; an amount, if given, > 0 ([`CaptureRequest::check_shape`]) | `BadInput`, `InvalidAmount` |
/// | C1 | the hold exists and the caller may see its wallet | `NotFound` |
/// | C2 | its key names an event of the hold: the same capture replays, anything else is a conflict; or a row of the wallet's journal that is not this capture | `IdempotencyConflict` |
/// | C3 | the hold is ACTIVE and not past `expiresAt` | `HoldNotActive` |
/// | C4 | the amount fits the currency | `InvalidAmount` |
/// | C5 | the amount is at most what remains | `HoldExceeded` |
/// | C6 | a held transfer's target stays under the ceiling | `InvalidAmount` |
pub fn capture(
    currency: &Currency,
    hold: &Hold,
    prior: Option<&HoldEvent>,
    key_used: bool,
    target: Option<&Wallet>,
    request: &CaptureRequest,
    clock: DateTime<Utc>,
) -> Result<Capture, LedgerError> {
    if let Some(event) = prior {
        let same = event.kind == HoldEventKind::Captured
            && event.requested == request.amount
            && event.final_capture == request.final_capture;
        return match same {
            true => Ok(Capture::Replay),
            false => Err(conflict(&request.key)),
        };
    }
    if key_used {
        return Err(conflict(&request.key));
    }
    check_active(hold, clock)?;
    let remaining = hold.remaining();
    let amount = match request.amount {
        Some(amount) => money::validate_amount(amount, currency)?,
        None => remaining,
    };
    if amount > remaining {
        return Err(LedgerError::HoldExceeded(format!(
            "the hold has {remaining} left to capture, asked for {amount}"
        )));
    }
    if let Some(t) = target {
        money::check_credit(t, amount, currency)?;
    }
    let rest = remaining - amount;
    let release = if request.final_capture {
        rest
    } else {
        Decimal::ZERO
    };
    Ok(Capture::New {
        amount,
        release,
        ends: rest.is_zero() || request.final_capture,
    })
}

/// What a void does.
#[derive(Debug, PartialEq)]
pub enum Void {
    Replay,
    /// Give back what remains.
    Release(Decimal),
}

/// Decides `voidHold` on the locked `hold`:
///
/// | # | check | refusal |
/// |---|-------|---------|
/// | V0 | shape: key | `BadInput` |
/// | V1 | the hold exists and the caller may see its wallet | `NotFound` |
/// | V2 | its key names an event of the hold: this void replays, anything else is a conflict | `IdempotencyConflict` |
/// | V3 | the hold is ACTIVE and not past `expiresAt` | `HoldNotActive` |
pub fn void(
    hold: &Hold,
    prior: Option<&HoldEvent>,
    request: &VoidRequest,
    clock: DateTime<Utc>,
) -> Result<Void, LedgerError> {
    if let Some(event) = prior {
        return match event.kind == HoldEventKind::Voided {
            true => Ok(Void::Replay),
            false => Err(conflict(&request.key)),
        };
    }
    check_active(hold, clock)?;
    Ok(Void::Release(hold.remaining()))
}

/// What the expiry worker releases: the remainder of an ACTIVE hold past `expiresAt`.
pub fn expiry(hold: &Hold, clock: DateTime<Utc>) -> Option<Decimal> {
    (hold.status == HoldStatus::Active && hold.expires_at <= clock).then(|| hold.remaining())
}

/// Decides a credit limit change on the locked `wallet`; `Ok(None)` is a replay of the
/// change its key names (`existing`: its limit and reason).
///
/// | # | check | refusal |
/// |---|-------|---------|
/// | L0 | shape: key, reason not blank, limit ≥ 0 | `BadInput`, `InvalidAmount` |
/// | L1 | the wallet exists | `NotFound` |
/// | L2 | its key names a change: the same one replays, another is a conflict | `IdempotencyConflict` |
/// | L3 | the currency is fiat | `CurrencyNotSupported` |
/// | L4 | the limit fits the currency | `InvalidAmount` |
pub fn credit_limit(
    currencies: &CurrencyRegistry,
    wallet: &Wallet,
    existing: Option<(Decimal, &str)>,
    (limit, reason, key): (Decimal, &str, &str),
) -> Result<Option<Decimal>, LedgerError> {
    if let Some((old_limit, old_reason)) = existing {
        return match old_limit == limit && old_reason == reason {
            true => Ok(None),
            false => Err(conflict(key)),
        };
    }
    let currency = fiat(currencies, wallet)?;
    if limit.is_zero() {
        return Ok(Some(money::at_scale(limit, currency)));
    }
    money::validate_amount(limit, currency).map(Some)
}

fn fiat<'c>(
    currencies: &'c CurrencyRegistry,
    wallet: &Wallet,
) -> Result<&'c Currency, LedgerError> {
    currencies
        .get(&wallet.currency)
        .filter(|c| c.kind == CurrencyKind::Fiat)
        .ok_or_else(|| {
            LedgerError::CurrencyNotSupported(format!(
                "holds and credit limits are for fiat wallets; this one holds {}",
                wallet.currency
            ))
        })
}

fn check_active(hold: &Hold, clock: DateTime<Utc>) -> Result<(), LedgerError> {
    if hold.status != HoldStatus::Active {
        return Err(LedgerError::HoldNotActive(format!(
            "the hold is {}",
            hold.status
        )));
    }
    if hold.expires_at <= clock {
        return Err(LedgerError::HoldNotActive(format!(
            "the hold expired at {}",
            hold.expires_at
        )));
    }
    Ok(())
}

fn same_authorization(hold: &Hold, request: &AuthorizeRequest) -> bool {
    hold.wallet_id == request.wallet_id
        && hold.to_wallet_id == request.to_wallet_id
        && hold.amount == request.amount
        && hold.description == request.description
        && hold.reference == request.reference
        && hold.metadata == request.metadata
        && request.expires_at.is_none_or(|at| at == hold.expires_at)
}

fn conflict(key: &str) -> LedgerError {
    crate::ledger::judge::key_conflict("idempotencyKey", key)
}

#[cfg(test)]
mod tests {
    //! Each table is walked the TigerBeetle way: a request that breaks every rule gets the
    //! first refusal; mend that one and the next answers, down the table.

    use chrono::Duration;

    use super::*;
    use crate::ledger::judge::{
        self,
        tests::{at, dec},
    };

    fn currencies() -> CurrencyRegistry {
        CurrencyRegistry::from_rows(vec![
            Currency::plain("USD", CurrencyKind::Fiat, 2),
            Currency::plain("EUR", CurrencyKind::Fiat, 2),
            Currency::plain("BTC", CurrencyKind::Crypto, 8),
        ])
    }

    /// Alice's wallet `id` (the judge's fixture).
    fn wallet(id: i64, currency: &str, balance: &str) -> Wallet {
        judge::tests::wallet(id, "alice", currency, balance)
    }

    fn hold(amount: &str, captured: &str) -> Hold {
        Hold {
            id: 7,
            wallet_id: 1,
            to_wallet_id: None,
            amount: dec(amount),
            captured: dec(captured),
            released: Decimal::ZERO,
            status: HoldStatus::Active,
            idempotency_key: "auth".into(),
            expires_at: at(100),
            description: None,
            reference: None,
            metadata: None,
            created_by: "alice".into(),
            created_at: at(0),
            updated_at: at(0),
        }
    }

    fn event(kind: HoldEventKind, requested: Option<&str>, final_capture: bool) -> HoldEvent {
        HoldEvent {
            id: 1,
            hold_id: 7,
            kind,
            amount: Decimal::ZERO,
            released: Decimal::ZERO,
            transaction_id: None,
            idempotency_key: Some("k".into()),
            requested: requested.map(dec),
            final_capture,
            actor: "alice".into(),
            created_at: at(0),
        }
    }

    fn authorization(amount: &str) -> AuthorizeRequest {
        AuthorizeRequest {
            wallet_id: 1,
            to_wallet_id: None,
            amount: dec(amount),
            key: "auth".into(),
            expires_at: None,
            description: None,
            reference: None,
            metadata: None,
            policy: HoldPolicy::default(),
        }
    }

    fn capture_of(amount: Option<&str>, final_capture: bool) -> CaptureRequest {
        CaptureRequest {
            hold_id: 7,
            amount: amount.map(dec),
            key: "k".into(),
            final_capture,
        }
    }

    fn code(e: LedgerError) -> &'static str {
        match e {
            LedgerError::NotFound(_) => "NOT_FOUND",
            LedgerError::IdempotencyConflict(_) => "IDEMPOTENCY_CONFLICT",
            LedgerError::CurrencyMismatch(_) => "CURRENCY_MISMATCH",
            LedgerError::CurrencyNotSupported(_) => "CURRENCY_NOT_SUPPORTED",
            LedgerError::InvalidAmount(_) => "INVALID_AMOUNT",
            LedgerError::BadInput(_) => "BAD_USER_INPUT",
            LedgerError::InsufficientFunds { .. } => "INSUFFICIENT_FUNDS",
            LedgerError::HoldExceeded(_) => "HOLD_EXCEEDED",
            LedgerError::HoldNotActive(_) => "HOLD_NOT_ACTIVE",
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn authorisations_refuse_in_order() {
        let (currencies, policy) = (currencies(), HoldPolicy::default());
        let clock = at(0);
        let btc = wallet(1, "BTC", "0.5");
        let eur = wallet(2, "EUR", "0");
        let usd_target = wallet(2, "USD", "0");
        let usd = wallet(1, "USD", "10.00");
        let other_hold = Hold {
            amount: dec("1.00"),
            ..hold("1.00", "0")
        };
        let mut request = authorization("20.001");
        request.to_wallet_id = Some(2);
        request.expires_at = Some(clock - Duration::seconds(1));
        let decide =
            |w: &Wallet, t: Option<Option<&Wallet>>, e: Option<&Hold>, r: &AuthorizeRequest| {
                authorize(&currencies, &policy, w, t, e, r, clock).map_err(code)
            };
        // A2: the key names another hold.
        assert_eq!(
            decide(&btc, Some(None), Some(&other_hold), &request),
            Err("IDEMPOTENCY_CONFLICT")
        );
        // A3: the target does not exist.
        assert_eq!(decide(&btc, Some(None), None, &request), Err("NOT_FOUND"));
        // A4: another currency.
        assert_eq!(
            decide(&btc, Some(Some(&eur)), None, &request),
            Err("CURRENCY_MISMATCH")
        );
        // A5: crypto.
        let btc_target = wallet(2, "BTC", "0");
        assert_eq!(
            decide(&btc, Some(Some(&btc_target)), None, &request),
            Err("CURRENCY_NOT_SUPPORTED")
        );
        // A6: more decimals than USD has.
        assert_eq!(
            decide(&usd, Some(Some(&usd_target)), None, &request),
            Err("INVALID_AMOUNT")
        );
        // A7: expiry in the past, then beyond the cap.
        request.amount = dec("20.00");
        assert_eq!(
            decide(&usd, Some(Some(&usd_target)), None, &request),
            Err("BAD_USER_INPUT")
        );
        request.expires_at = Some(clock + policy.max_expiry + Duration::seconds(1));
        assert_eq!(
            decide(&usd, Some(Some(&usd_target)), None, &request),
            Err("BAD_USER_INPUT")
        );
        // A8: 20.00 of 10.00 available.
        request.expires_at = Some(clock + policy.max_expiry);
        assert_eq!(
            decide(&usd, Some(Some(&usd_target)), None, &request),
            Err("INSUFFICIENT_FUNDS")
        );
        // Mended: reserved at the currency's scale until the given time.
        request.amount = dec("10");
        assert_eq!(
            decide(&usd, Some(Some(&usd_target)), None, &request),
            Ok(Authorization::New {
                amount: dec("10.00"),
                expires_at: clock + policy.max_expiry
            })
        );
        // Without expiresAt: the default period.
        request.expires_at = None;
        assert_eq!(
            decide(&usd, Some(Some(&usd_target)), None, &request),
            Ok(Authorization::New {
                amount: dec("10.00"),
                expires_at: clock + policy.default_expiry
            })
        );
    }

    #[test]
    fn authorisations_are_judged_against_credit_holds_and_locks() {
        let (currencies, policy) = (currencies(), HoldPolicy::default());
        // 10 + 50 credit - 15 held - 5 locked = 40 available.
        let mut w = wallet(1, "USD", "10.00");
        w.credit_limit = dec("50.00");
        w.held_balance = dec("15.00");
        w.locked_balance = dec("5.00");
        assert_eq!(w.available_balance(), dec("40.00"));
        let decide = |amount: &str| {
            authorize(
                &currencies,
                &policy,
                &w,
                None,
                None,
                &authorization(amount),
                at(0),
            )
            .map_err(code)
        };
        assert_eq!(decide("40.01"), Err("INSUFFICIENT_FUNDS"));
        assert!(decide("40.00").is_ok());
        // A limit lowered below what is used: nothing is available.
        let mut lowered = wallet(1, "USD", "-30.00");
        lowered.credit_limit = dec("20.00");
        assert_eq!(lowered.available_balance(), dec("-10.00"));
        assert_eq!(
            authorize(
                &currencies,
                &policy,
                &lowered,
                None,
                None,
                &authorization("0.01"),
                at(0)
            )
            .map_err(code),
            Err("INSUFFICIENT_FUNDS")
        );
    }

    #[test]
    fn authorisations_replay_only_the_same_request() {
        let (currencies, policy) = (currencies(), HoldPolicy::default());
        let w = wallet(1, "USD", "0.00");
        let stored = hold("10.00", "0");
        let same = authorization("10.0");
        // Funds are not judged again for a replay (the hold is made).
        assert_eq!(
            authorize(&currencies, &policy, &w, None, Some(&stored), &same, at(0)).map_err(code),
            Ok(Authorization::Replay)
        );
        let mut other_target = same.clone();
        other_target.to_wallet_id = Some(2);
        let mut other_expiry = same.clone();
        other_expiry.expires_at = Some(at(99));
        let mut given_expiry = same.clone();
        given_expiry.expires_at = Some(at(100));
        assert_eq!(
            authorize(
                &currencies,
                &policy,
                &w,
                None,
                Some(&stored),
                &given_expiry,
                at(0)
            )
            .map_err(code),
            Ok(Authorization::Replay)
        );
        for different in [authorization("10.01"), other_target, other_expiry] {
            assert_eq!(
                authorize(
                    &currencies,
                    &policy,
                    &w,
                    Some(Some(&w)),
                    Some(&stored),
                    &different,
                    at(0)
                )
                .map_err(code),
                Err("IDEMPOTENCY_CONFLICT")
            );
        }
    }

    #[test]
    fn captures_refuse_in_order() {
        let usd = Currency::plain("USD", CurrencyKind::Fiat, 2);
        let target_full = wallet(2, "USD", "9999999999999999999999999.00");
        let mut voided = hold("10.00", "4.00");
        voided.status = HoldStatus::Voided;
        let request = capture_of(Some("6.001"), false);
        let decide =
            |h: &Hold,
             e: Option<&HoldEvent>,
             j: bool,
             t: Option<&Wallet>,
             r: &CaptureRequest,
             clock| { capture(&usd, h, e, j, t, r, clock).map_err(code) };
        // C2: the key names a void of this hold, or another movement of the wallet.
        let voiding = event(HoldEventKind::Voided, None, false);
        assert_eq!(
            decide(
                &voided,
                Some(&voiding),
                false,
                Some(&target_full),
                &request,
                at(200)
            ),
            Err("IDEMPOTENCY_CONFLICT")
        );
        assert_eq!(
            decide(&voided, None, true, Some(&target_full), &request, at(200)),
            Err("IDEMPOTENCY_CONFLICT")
        );
        // C3: voided; then active but past its expiry.
        assert_eq!(
            decide(&voided, None, false, Some(&target_full), &request, at(0)),
            Err("HOLD_NOT_ACTIVE")
        );
        let active = hold("10.00", "4.00");
        assert_eq!(
            decide(&active, None, false, Some(&target_full), &request, at(100)),
            Err("HOLD_NOT_ACTIVE")
        );
        // C4, C5, C6.
        assert_eq!(
            decide(&active, None, false, Some(&target_full), &request, at(99)),
            Err("INVALID_AMOUNT")
        );
        let request = capture_of(Some("6.01"), false);
        assert_eq!(
            decide(&active, None, false, Some(&target_full), &request, at(99)),
            Err("HOLD_EXCEEDED")
        );
        let request = capture_of(Some("6.00"), false);
        assert_eq!(
            decide(&active, None, false, Some(&target_full), &request, at(99)),
            Err("INVALID_AMOUNT")
        );
        // Mended: all that remains ends the hold.
        assert_eq!(
            decide(&active, None, false, None, &request, at(99)),
            Ok(Capture::New {
                amount: dec("6.00"),
                release: Decimal::ZERO,
                ends: true
            })
        );
    }

    #[test]
    fn captures_partial_final_and_default() {
        let usd = Currency::plain("USD", CurrencyKind::Fiat, 2);
        let active = hold("10.00", "4.00");
        let decide = |r: &CaptureRequest| capture(&usd, &active, None, false, None, r, at(0));
        assert_eq!(
            decide(&capture_of(Some("1"), false)).map_err(code),
            Ok(Capture::New {
                amount: dec("1.00"),
                release: dec("0"),
                ends: false
            })
        );
        assert_eq!(
            decide(&capture_of(Some("1"), true)).map_err(code),
            Ok(Capture::New {
                amount: dec("1.00"),
                release: dec("5.00"),
                ends: true
            })
        );
        assert_eq!(
            decide(&capture_of(None, false)).map_err(code),
            Ok(Capture::New {
                amount: dec("6.00"),
                release: dec("0"),
                ends: true
            })
        );
        // Replays: the same amount (or none) and the same finality; anything else conflicts,
        // whatever the hold's state now.
        let mut captured = hold("10.00", "10.00");
        captured.status = HoldStatus::Captured;
        let earlier = event(HoldEventKind::Captured, Some("1.0"), true);
        assert_eq!(
            capture(
                &usd,
                &captured,
                Some(&earlier),
                false,
                None,
                &capture_of(Some("1"), true),
                at(500)
            )
            .map_err(code),
            Ok(Capture::Replay)
        );
        for different in [
            capture_of(Some("1"), false),
            capture_of(None, true),
            capture_of(Some("2"), true),
        ] {
            assert_eq!(
                capture(
                    &usd,
                    &captured,
                    Some(&earlier),
                    false,
                    None,
                    &different,
                    at(0)
                )
                .map_err(code),
                Err("IDEMPOTENCY_CONFLICT")
            );
        }
    }

    #[test]
    fn voids_and_expiry() {
        let active = hold("10.00", "4.00");
        let request = VoidRequest {
            hold_id: 7,
            key: "k".into(),
        };
        assert_eq!(
            void(&active, None, &request, at(0)).map_err(code),
            Ok(Void::Release(dec("6.00")))
        );
        assert_eq!(
            void(&active, None, &request, at(100)).map_err(code),
            Err("HOLD_NOT_ACTIVE")
        );
        let mut voided = active.clone();
        voided.status = HoldStatus::Voided;
        assert_eq!(
            void(
                &voided,
                Some(&event(HoldEventKind::Voided, None, false)),
                &request,
                at(0)
            )
            .map_err(code),
            Ok(Void::Replay)
        );
        assert_eq!(
            void(
                &voided,
                Some(&event(HoldEventKind::Captured, None, false)),
                &request,
                at(0)
            )
            .map_err(code),
            Err("IDEMPOTENCY_CONFLICT")
        );
        assert_eq!(
            void(&voided, None, &request, at(0)).map_err(code),
            Err("HOLD_NOT_ACTIVE")
        );
        // The worker releases an ACTIVE hold once its time has come, and nothing else.
        assert_eq!(expiry(&active, at(99)), None);
        assert_eq!(expiry(&active, at(100)), Some(dec("6.00")));
        assert_eq!(expiry(&voided, at(500)), None);
    }

    #[test]
    fn credit_limits_refuse_in_order() {
        let currencies = currencies();
        let usd = wallet(1, "USD", "0.00");
        let btc = wallet(3, "BTC", "0");
        let decide = |w: &Wallet, existing: Option<(Decimal, &str)>, limit: &str| {
            credit_limit(&currencies, w, existing, (dec(limit), "review", "k")).map_err(code)
        };
        assert_eq!(
            decide(&btc, Some((dec("5"), "other")), "1.001"),
            Err("IDEMPOTENCY_CONFLICT")
        );
        assert_eq!(decide(&btc, None, "1.001"), Err("CURRENCY_NOT_SUPPORTED"));
        assert_eq!(decide(&usd, None, "1.001"), Err("INVALID_AMOUNT"));
        assert_eq!(decide(&usd, None, "1.5"), Ok(Some(dec("1.50"))));
        assert_eq!(decide(&usd, None, "0"), Ok(Some(dec("0.00"))));
        assert_eq!(decide(&usd, Some((dec("1.50"), "review")), "1.5"), Ok(None));
    }
}
