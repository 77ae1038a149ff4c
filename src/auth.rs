//! Bearer tokens (HS256 JWT) and the identity of a caller.
//!
//! A token names its subject (`sub`), role, issuer (`iss`), audience (`aud`), when it was
//! issued (`iat`) and when it expires (`exp`); its header names the key that signed it
//! (`kid`). One key signs; earlier keys may still verify, so that a secret is rotated
//! without logging everyone out. The issuer and audience differ per deployment (and by
//! default per environment), so a token of one is refused by another sharing its secret.
//! A token may last at most its role's maximum lifetime, checked when it is minted and
//! again when it is presented. Revoking a subject's tokens is [`crate::revocation`]'s.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A wallet owner: sees and acts on their own wallets only.
    User,
    /// The payment back office: credits deposits, reconciles, sees every wallet.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "user" => Ok(Role::User),
            "operator" => Ok(Role::Operator),
            other => Err(format!(
                "unknown role {other:?} (expected user or operator)"
            )),
        }
    }
}

/// Who is calling: the verified subject and role of a bearer token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Viewer {
    pub user_id: String,
    pub role: Role,
}

impl Viewer {
    pub fn is_operator(&self) -> bool {
        self.role == Role::Operator
    }
}

/// The claims a token is minted with.
#[derive(Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    role: Role,
    iss: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// The claims read back from a verified token (`iss`, `aud` and `exp` are checked by
/// `jsonwebtoken` itself). `iat` is required: revocation and the lifetime bound need it.
#[derive(Deserialize)]
struct PresentedClaims {
    sub: String,
    role: Role,
    iat: u64,
    exp: u64,
}

/// Why a presented token was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid: {0}")]
    Invalid(String),
    /// Its subject's tokens issued before a time it predates were revoked.
    #[error("the token has been revoked")]
    Revoked,
    /// Revocations could not be checked just now (the database did not answer).
    #[error("the token cannot be checked right now")]
    Unavailable,
}

/// What a token may say, and for how long: the same for minting and verifying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenPolicy {
    /// `iss` of minted tokens; presented tokens must carry it.
    pub issuer: String,
    /// `aud` of minted tokens; presented tokens must name it.
    pub audience: String,
    /// The longest a user token may last (`exp - iat`).
    pub max_user_ttl: Duration,
    /// The longest an operator token may last: an operator can create money, so a leaked
    /// operator token must not be good for long.
    pub max_operator_ttl: Duration,
}

pub const DEVELOPMENT_ISSUER: &str = "wallet-development";
pub const DEVELOPMENT_AUDIENCE: &str = "wallet-api-development";
pub const PRODUCTION_ISSUER: &str = "wallet-production";
pub const PRODUCTION_AUDIENCE: &str = "wallet-api-production";
pub const DEFAULT_MAX_USER_TTL: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_MAX_OPERATOR_TTL: Duration = Duration::from_secs(3600);

impl TokenPolicy {
    /// The development defaults: a development token is refused by a production server.
    pub fn development() -> Self {
        TokenPolicy {
            issuer: DEVELOPMENT_ISSUER.into(),
            audience: DEVELOPMENT_AUDIENCE.into(),
            max_user_ttl: DEFAULT_MAX_USER_TTL,
            max_operator_ttl: DEFAULT_MAX_OPERATOR_TTL,
        }
    }

    /// The production defaults.
    pub fn production() -> Self {
        TokenPolicy {
            issuer: PRODUCTION_ISSUER.into(),
            audience: PRODUCTION_AUDIENCE.into(),
            ..TokenPolicy::development()
        }
    }

    /// The longest a token of `role` may last.
    pub fn max_ttl(&self, role: Role) -> Duration {
        match role {
            Role::User => self.max_user_ttl,
            Role::Operator => self.max_operator_ttl,
        }
    }

    /// How long after a revocation's cutoff a token it revoked may still be presented
    /// (and refused): afterwards every such token has expired anyway.
    pub fn revocation_horizon(&self) -> Duration {
        self.max_user_ttl.max(self.max_operator_ttl) + Duration::from_secs(LEEWAY_SECS)
    }
}

impl Default for TokenPolicy {
    fn default() -> Self {
        TokenPolicy::development()
    }
}

/// A verified token: who it names, and when it was issued and stops being valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub viewer: Viewer,
    /// `iat`, Unix seconds.
    pub issued_at: u64,
    /// Until when (Unix seconds, leeway included) it is accepted: long-lived sessions end
    /// then.
    pub valid_until: u64,
}

/// Signs tokens with one HS256 secret and verifies them with it and any earlier ones,
/// each found by its key id.
#[derive(Clone)]
pub struct TokenKeys {
    signing_kid: String,
    encoding: EncodingKey,
    /// By key id: the signing key's and each earlier key's.
    verifying: Arc<HashMap<String, DecodingKey>>,
    validation: Validation,
    policy: TokenPolicy,
    /// Tokens verified already, by their text: a client sends the same token with every
    /// request, and checking its signature again was a twentieth of what a small request
    /// cost the server. Only tokens that verified are kept, each until it expires.
    verified: Arc<Mutex<lru::LruCache<String, Verified>>>,
}

/// Verified tokens kept (a few hundred bytes each).
const VERIFIED_TOKENS: usize = 1024;

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKeys")
            .field("signing_kid", &self.signing_kid)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Clock skew tolerated on `exp` and `iat`.
const LEEWAY_SECS: u64 = 5;
/// The longest token subject, in bytes (a user id).
pub const MAX_SUBJECT_LEN: usize = 128;

/// The key id of a secret: the first 8 bytes of SHA-256 over a fixed label and the
/// secret, in hex. It names the key in token headers and logs without revealing it.
pub fn key_id(secret: &[u8]) -> String {
    let digest = sha2::Sha256::new()
        .chain_update(b"wallet-jwt-key-id\0")
        .chain_update(secret)
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl TokenKeys {
    /// One key and the development policy (tests, benchmarks, tools).
    pub fn new(secret: &[u8]) -> Self {
        TokenKeys::with_keys(secret, &[], TokenPolicy::development())
    }

    /// Signs with `current`; verifies with it and with each of `previous`.
    pub fn with_keys(current: &[u8], previous: &[&[u8]], policy: TokenPolicy) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.set_issuer(&[&policy.issuer]);
        validation.set_audience(&[&policy.audience]);
        let verifying = std::iter::once(current)
            .chain(previous.iter().copied())
            .map(|secret| (key_id(secret), DecodingKey::from_secret(secret)))
            .collect();
        TokenKeys {
            signing_kid: key_id(current),
            encoding: EncodingKey::from_secret(current),
            verifying: Arc::new(verifying),
            validation,
            policy,
            verified: Arc::new(Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(VERIFIED_TOKENS).unwrap_or(std::num::NonZeroUsize::MIN),
            ))),
        }
    }

    /// The id of the key that signs.
    pub fn signing_key_id(&self) -> &str {
        &self.signing_kid
    }

    /// The ids of the keys that only verify (earlier secrets still accepted).
    pub fn previous_key_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self
            .verifying
            .keys()
            .map(String::as_str)
            .filter(|kid| *kid != self.signing_kid)
            .collect();
        ids.sort_unstable();
        ids
    }

    pub fn policy(&self) -> &TokenPolicy {
        &self.policy
    }

    /// Mints a token for `subject` with `role`, valid for `ttl` — at most the role's
    /// maximum lifetime.
    pub fn mint(&self, subject: &str, role: Role, ttl: Duration) -> anyhow::Result<String> {
        anyhow::ensure!(
            !subject.is_empty() && subject.len() <= MAX_SUBJECT_LEN,
            "the subject must be 1 to {MAX_SUBJECT_LEN} bytes"
        );
        let max = self.policy.max_ttl(role);
        anyhow::ensure!(
            ttl <= max,
            "{role} tokens may last at most {} ({}); {} asked for",
            show_duration(max),
            match role {
                Role::User => "WALLET_JWT_MAX_USER_TTL",
                Role::Operator => "WALLET_JWT_MAX_OPERATOR_TTL",
            },
            show_duration(ttl),
        );
        let now = jsonwebtoken::get_current_timestamp();
        let claims = MintedClaims {
            sub: subject,
            role,
            iss: &self.policy.issuer,
            aud: &self.policy.audience,
            iat: now,
            exp: now + ttl.as_secs(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.signing_kid.clone());
        Ok(jsonwebtoken::encode(&header, &claims, &self.encoding)?)
    }

    /// Verifies a token — its key id, signature, algorithm, issuer, audience, expiry and
    /// lifetime — and returns the caller it names. Revocation is checked apart, against
    /// the database ([`crate::revocation::Revocations::check`]).
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let now = jsonwebtoken::get_current_timestamp();
        {
            let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            match verified.get(token) {
                Some(known) if now <= known.valid_until => return Ok(known.clone()),
                Some(_) => {
                    verified.pop(token);
                    return Err(TokenError::Expired);
                }
                None => {}
            }
        }
        let checked = self.check(token)?;
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(token.to_owned(), checked.clone());
        Ok(checked)
    }

    /// [`TokenKeys::verify`] without the cache.
    fn check(&self, token: &str) -> Result<Verified, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let invalid = |why: &str| TokenError::Invalid(why.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(&e.to_string()))?;
        let kid = header.kid.ok_or_else(|| invalid("no key id (kid)"))?;
        let key = self
            .verifying
            .get(&kid)
            .ok_or_else(|| invalid("unknown key id (kid)"))?;
        let data =
            jsonwebtoken::decode::<PresentedClaims>(token, key, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    _ => TokenError::Invalid(e.to_string()),
                }
            })?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.len() > MAX_SUBJECT_LEN {
            return Err(invalid("bad subject"));
        }
        let now = jsonwebtoken::get_current_timestamp();
        if claims.iat > now + LEEWAY_SECS {
            // Issued in the future would also escape every revocation cutoff.
            return Err(invalid("issued in the future (iat)"));
        }
        let Some(lifetime) = claims.exp.checked_sub(claims.iat) else {
            return Err(invalid("expires before it was issued"));
        };
        if lifetime > self.policy.max_ttl(claims.role).as_secs() {
            return Err(invalid("lasts longer than its role allows"));
        }
        Ok(Verified {
            viewer: Viewer {
                user_id: claims.sub,
                role: claims.role,
            },
            issued_at: claims.iat,
            valid_until: claims.exp.saturating_add(LEEWAY_SECS),
        })
    }

    /// Reads `Bearer <token>` from an Authorization header value and verifies it.
    pub fn verify_header(&self, header: &str) -> Result<Verified, TokenError> {
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| TokenError::Invalid("expected `Bearer <token>`".into()))?;
        self.verify(token.trim())
    }
}

/// Parses durations like `90s`, `15m`, `1h`, `7d` (for `wallet token --ttl` and the
/// maximum lifetimes).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("bad duration unit in {s:?} (use s, m, h or d)")),
    };
    let secs = n
        .checked_mul(unit_secs)
        .filter(|secs| *secs <= MAX_TTL_SECS)
        .ok_or_else(|| format!("{s:?} is too long (at most 3650d)"))?;
    if secs == 0 {
        return Err("the duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

/// Ten years: no lifetime setting needs more, and `iat + ttl` stays far from overflow.
const MAX_TTL_SECS: u64 = 3650 * 86_400;

/// A duration in the largest of `h`, `m`, `s` that divides it (`3600s` → `1h`), or in
/// days from two days on.
pub fn show_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 2 * 86_400 && secs.is_multiple_of(86_400) {
        return format!("{}d", secs / 86_400);
    }
    for (unit, size) in [("h", 3600), ("m", 60)] {
        if secs > 0 && secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn round_trip_and_rejections() {
        let keys = TokenKeys::new(SECRET);
        let token = keys
            .mint("alice", Role::User, Duration::from_secs(60))
            .unwrap();
        let verified = keys.verify(&token).unwrap();
        assert_eq!(verified.viewer.user_id, "alice");
        assert_eq!(verified.viewer.role, Role::User);
        assert!(keys.verify_header(&format!("Bearer {token}")).is_ok());
        assert!(keys.verify_header(&token).is_err());

        let other = TokenKeys::new(b"another-secret-another-secret-xx");
        assert!(matches!(other.verify(&token), Err(TokenError::Invalid(_))));
        let mut tampered = token.clone();
        tampered.pop();
        assert!(keys.verify(&tampered).is_err());
    }

    /// A token verified once is served from the cache only until it expires; a token
    /// that failed is never kept.
    #[test]
    fn the_verified_token_cache_keeps_expiry_and_refusals() {
        let keys = TokenKeys::new(SECRET);
        let token = keys
            .mint("alice", Role::User, Duration::from_secs(60))
            .unwrap();
        let first = keys.verify(&token).unwrap();
        assert_eq!(keys.verify(&token).unwrap(), first);
        // The same token, as if its time had passed while it was kept.
        keys.verified.lock().unwrap().put(
            token.clone(),
            Verified {
                valid_until: jsonwebtoken::get_current_timestamp() - 1,
                ..first
            },
        );
        assert!(matches!(keys.verify(&token), Err(TokenError::Expired)));
        // Dropped once found expired: verified afresh (the real token is still valid).
        assert!(keys.verify(&token).is_ok());

        let mut tampered = token.clone();
        tampered.pop();
        assert!(keys.verify(&tampered).is_err());
        assert!(keys.verified.lock().unwrap().get(&tampered).is_none());
        assert!(keys.verify(&tampered).is_err());
    }

    #[test]
    fn issuer_and_audience_must_match() {
        let development = TokenKeys::new(SECRET);
        let production = TokenKeys::with_keys(SECRET, &[], TokenPolicy::production());
        let token = development
            .mint("alice", Role::User, Duration::from_secs(60))
            .unwrap();
        assert!(matches!(
            production.verify(&token),
            Err(TokenError::Invalid(_))
        ));
        let other_audience = TokenKeys::with_keys(
            SECRET,
            &[],
            TokenPolicy {
                audience: "elsewhere".into(),
                ..TokenPolicy::development()
            },
        );
        assert!(other_audience.verify(&token).is_err());
    }

    #[test]
    fn previous_keys_verify_and_never_sign() {
        let old = b"the-old-secret-the-old-secret-xx";
        let before = TokenKeys::new(old);
        let token = before
            .mint("alice", Role::User, Duration::from_secs(60))
            .unwrap();
        let rotated = TokenKeys::with_keys(SECRET, &[old], TokenPolicy::development());
        assert_eq!(rotated.verify(&token).unwrap().viewer.user_id, "alice");
        assert_eq!(rotated.previous_key_ids(), vec![key_id(old)]);
        let fresh = rotated
            .mint("alice", Role::User, Duration::from_secs(60))
            .unwrap();
        let header = jsonwebtoken::decode_header(&fresh).unwrap();
        assert_eq!(header.kid.as_deref(), Some(key_id(SECRET).as_str()));
        // Once the old secret is dropped, its tokens are unknown.
        let after = TokenKeys::new(SECRET);
        assert_eq!(
            after.verify(&token),
            Err(TokenError::Invalid("unknown key id (kid)".into()))
        );
    }

    #[test]
    fn lifetimes_are_bounded_per_role() {
        let keys = TokenKeys::new(SECRET);
        assert!(
            keys.mint("ops", Role::Operator, Duration::from_secs(3600))
                .is_ok()
        );
        let refused = keys
            .mint("ops", Role::Operator, Duration::from_secs(7200))
            .unwrap_err()
            .to_string();
        assert!(refused.contains("at most 1h"), "{refused}");
        assert!(refused.contains("WALLET_JWT_MAX_OPERATOR_TTL"), "{refused}");
        assert!(
            keys.mint("alice", Role::User, Duration::from_secs(86_400))
                .is_ok()
        );
        assert!(
            keys.mint("alice", Role::User, Duration::from_secs(86_401))
                .is_err()
        );
    }

    #[test]
    fn key_ids_are_stable_and_distinct() {
        assert_eq!(key_id(SECRET), key_id(SECRET));
        assert_ne!(key_id(SECRET), key_id(b"another"));
        assert_eq!(key_id(SECRET).len(), 16);
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("99999999999999999d").is_err());
        assert_eq!(show_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(show_duration(Duration::from_secs(86_400)), "24h");
        assert_eq!(show_duration(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(show_duration(Duration::from_secs(90)), "90s");
    }
}
