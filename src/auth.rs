//! Bearer tokens (HS256 JWT) and the identity of a caller.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

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

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: Role,
    exp: u64,
    iat: u64,
}

/// Why a presented token was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid: {0}")]
    Invalid(String),
}

/// Signs and verifies tokens with one HS256 secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

/// Clock skew tolerated on `exp`.
const LEEWAY_SECS: u64 = 5;
const MAX_SUBJECT_LEN: usize = 128;

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Mints a token for `subject` with `role`, valid for `ttl`.
    pub fn mint(&self, subject: &str, role: Role, ttl: Duration) -> anyhow::Result<String> {
        anyhow::ensure!(
            !subject.is_empty() && subject.len() <= MAX_SUBJECT_LEN,
            "the subject must be 1 to {MAX_SUBJECT_LEN} bytes"
        );
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: subject.to_owned(),
            role,
            iat: now,
            exp: now + ttl.as_secs(),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// Verifies a token (signature, algorithm, expiry) and returns the caller it names.
    pub fn verify(&self, token: &str) -> Result<Viewer, TokenError> {
        self.verify_session(token).map(|(viewer, _)| viewer)
    }

    /// Like [`verify`](Self::verify), also returning until when (Unix seconds, leeway
    /// included) the token stays valid: long-lived sessions end then.
    pub fn verify_session(&self, token: &str) -> Result<(Viewer, u64), TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            })?;
        let sub = data.claims.sub;
        if sub.is_empty() || sub.len() > MAX_SUBJECT_LEN {
            return Err(TokenError::Invalid("bad subject".into()));
        }
        let viewer = Viewer {
            user_id: sub,
            role: data.claims.role,
        };
        Ok((viewer, data.claims.exp.saturating_add(LEEWAY_SECS)))
    }

    /// Reads `Bearer <token>` from an Authorization header value.
    pub fn verify_header(&self, header: &str) -> Result<Viewer, TokenError> {
        self.verify_header_session(header).map(|(viewer, _)| viewer)
    }

    /// [`verify_session`](Self::verify_session) of an Authorization header value.
    pub fn verify_header_session(&self, header: &str) -> Result<(Viewer, u64), TokenError> {
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| TokenError::Invalid("expected `Bearer <token>`".into()))?;
        self.verify_session(token.trim())
    }
}

/// Parses durations like `90s`, `15m`, `1h`, `7d` (for `wallet token --ttl`).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("bad duration unit in {s:?} (use s, m, h or d)")),
    };
    if secs == 0 {
        return Err("the duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef");
        let token = keys
            .mint("alice", Role::User, Duration::from_secs(60))
            .unwrap();
        let viewer = keys.verify(&token).unwrap();
        assert_eq!(viewer.user_id, "alice");
        assert_eq!(viewer.role, Role::User);
        assert!(keys.verify_header(&format!("Bearer {token}")).is_ok());
        assert!(keys.verify_header(&token).is_err());

        let other = TokenKeys::new(b"another-secret-another-secret-xx");
        assert!(matches!(other.verify(&token), Err(TokenError::Invalid(_))));
        let mut tampered = token.clone();
        tampered.pop();
        assert!(keys.verify(&tampered).is_err());
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1y").is_err());
    }
}
