//! The HTTP side of a JSON-RPC node client: the node's URL (shown only redacted), the
//! rules it must follow (TLS unless the node is on this machine), and the reqwest client
//! alloy's transport runs on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::redact::redact;

/// How long one JSON-RPC call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening a connection (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest error text kept from a node or transport: a node may answer with
/// megabytes, and the text goes to logs.
const MAX_ERROR_CHARS: usize = 600;

/// A node's JSON-RPC URL. It may carry credentials (user and password, an API key in
/// the path or query), so it is shown only redacted: `Display` and `Debug` print
/// `https://***@host:port/***`; [`NodeUrl::expose`] gives the real one to the client.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeUrl(String);

impl NodeUrl {
    pub fn new(url: impl Into<String>) -> Self {
        NodeUrl(url.into().trim().to_owned())
    }

    /// The URL as configured, credentials and all: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for NodeUrl {
    fn from(url: &str) -> Self {
        NodeUrl::new(url)
    }
}

impl From<String> for NodeUrl {
    fn from(url: String) -> Self {
        NodeUrl::new(url)
    }
}

impl NodeUrl {
    /// What may be shown of it: redacted, or nothing if it is not a URL at all (then
    /// nothing tells where its credentials are).
    fn shown(&self) -> String {
        if self.0.contains("://") {
            redact(&self.0)
        } else {
            "(not shown: not a URL)".to_owned()
        }
    }
}

impl std::fmt::Display for NodeUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

impl std::fmt::Debug for NodeUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeUrl({})", self.shown())
    }
}

/// How to reach a node over HTTP: `WALLET_<NETWORK>_RPC_URL` and its CA file. `Debug`
/// shows the URL redacted and no credentials.
#[derive(Clone)]
pub struct Endpoint {
    /// The URL the requests go to, without user information (that goes in a header,
    /// so that no URL alloy or reqwest may print holds the password).
    url: reqwest::Url,
    /// `user:password` from the URL, percent-decoded.
    basic_auth: Option<(String, String)>,
    /// A PEM file of the certificate authorities the node's certificate must chain to
    /// (instead of the public web's).
    ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &redact(self.url.as_str()))
            .field("basic_auth", &self.basic_auth.as_ref().map(|_| "***"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Whether `host` is this machine: a loopback address or `localhost`.
fn is_loopback(host: url::Host<&str>) -> bool {
    match host {
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
        url::Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
    }
}

impl Endpoint {
    /// Checks `url` (named `variable` in messages) and `ca_file`: an `https://` URL, or
    /// `http://` to this machine only — a node elsewhere would be read and answered in
    /// the clear by anyone on the way. Every message shows the URL redacted.
    pub fn parse(variable: &str, url: &NodeUrl, ca_file: Option<&Path>) -> Result<Self, String> {
        let mut parsed = reqwest::Url::parse(url.expose())
            .map_err(|e| format!("{variable}={url} is not a URL: {e}"))?;
        let tls = match parsed.scheme() {
            "https" => true,
            "http" => false,
            other => {
                return Err(format!(
                    "{variable}={url}: the scheme {other:?} is not supported: use https:// \
                     (or http:// to a node on this machine)"
                ));
            }
        };
        let Some(host) = parsed.host() else {
            return Err(format!("{variable}={url} names no host"));
        };
        if !tls && !is_loopback(host) {
            return Err(format!(
                "{variable}={url} is plain HTTP to another machine: anyone on the way could \
                 read and forge the node's answers. Use https:// (with \
                 WALLET_ETHEREUM_CA_FILE if a private CA issued the node's certificate); \
                 http:// is accepted only for a node on this machine (127.0.0.1, ::1, \
                 localhost)"
            ));
        }
        if !tls && ca_file.is_some() {
            return Err(format!(
                "WALLET_ETHEREUM_CA_FILE is set but {variable}={url} is not https://"
            ));
        }
        let basic_auth = match (parsed.username(), parsed.password()) {
            ("", None) => None,
            (user, password) => {
                let decode = |s: &str| {
                    percent_decode(s).ok_or_else(|| {
                        format!("{variable}={url}: its user information is not valid UTF-8")
                    })
                };
                Some((decode(user)?, decode(password.unwrap_or(""))?))
            }
        };
        // Cannot fail for an http(s) URL with a host.
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        Ok(Endpoint {
            url: parsed,
            basic_auth,
            ca_file: ca_file.map(Path::to_path_buf),
        })
    }

    pub fn url(&self) -> reqwest::Url {
        self.url.clone()
    }

    /// The HTTP client for this node: TLS with Mozilla's roots (or only the CA file's),
    /// no redirects (a redirect could lead off to plain HTTP or another node), deadlines
    /// on connecting and on each call, credentials as a sensitive header.
    pub fn client(&self) -> Result<reqwest::Client, String> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .https_only(self.url.scheme() == "https");
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("WALLET_ETHEREUM_CA_FILE {}: {e}", path.display()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    format!(
                        "WALLET_ETHEREUM_CA_FILE {}: no PEM certificate in it",
                        path.display()
                    )
                })?;
            // Only this CA: a node with a private certificate is not also trusted on
            // the word of every public CA.
            builder = builder.tls_built_in_root_certs(false);
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        if let Some((user, password)) = &self.basic_auth {
            use base64::Engine as _;
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Basic {token}"))
                .map_err(|_| "the node URL's user information cannot be a header".to_owned())?;
            value.set_sensitive(true);
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        builder
            .build()
            .map_err(|e| format!("the HTTP client for the node: {}", describe(&e)))
    }
}

/// Percent-decoding of URL user information.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// An error and its causes, `: `-separated (a transport error's own text often says
/// only "error sending request"; the cause says why: refused, a certificate, a timeout),
/// with URLs redacted and the whole bounded in length.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    bounded(&redact(&text))
}

/// `text`, cut to [`MAX_ERROR_CHARS`] characters.
pub fn bounded(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VAR: &str = "WALLET_ETHEREUM_RPC_URL";

    #[test]
    fn plain_http_is_for_this_machine_only() {
        for ok in [
            "http://127.0.0.1:8545",
            "http://127.1.2.3:8545/",
            "http://[::1]:8545",
            "http://localhost:8545",
            "https://node.example.com/v3/KEY",
            "https://10.0.0.5:8545",
        ] {
            assert!(Endpoint::parse(VAR, &ok.into(), None).is_ok(), "{ok}");
        }
        for (refused, says) in [
            ("http://10.0.0.5:8545", "plain HTTP to another machine"),
            ("http://user:PASSWORD@node.example.com/", "plain HTTP"),
            ("ws://127.0.0.1:8546", "not supported"),
            ("127.0.0.1:8545", "is not a URL"),
            ("user:PASSWORD@node:8545", "not supported"),
            ("not a url", "is not a URL"),
        ] {
            let e = Endpoint::parse(VAR, &refused.into(), None).unwrap_err();
            assert!(e.contains(says), "{refused}: {e}");
            assert!(e.contains(VAR), "{e}");
            assert!(!e.contains("PASSWORD"), "{e}");
        }
        let e = Endpoint::parse(
            VAR,
            &"http://127.0.0.1:8545".into(),
            Some(Path::new("/ca.pem")),
        )
        .unwrap_err();
        assert!(e.contains("WALLET_ETHEREUM_CA_FILE"), "{e}");
    }

    #[test]
    fn credentials_leave_the_url_for_a_header() {
        let endpoint = Endpoint::parse(
            VAR,
            &"https://us%40er:p%3Ass@node.example.com:8545/key?x=1".into(),
            None,
        )
        .unwrap();
        assert_eq!(
            endpoint.url().as_str(),
            "https://node.example.com:8545/key?x=1"
        );
        assert_eq!(
            endpoint.basic_auth,
            Some(("us@er".to_owned(), "p:ss".to_owned()))
        );
        let url = NodeUrl::from("https://u:SECRET@h/KEY");
        assert_eq!(url.to_string(), "https://***@h/***");
        assert!(!format!("{url:?}").contains("SECRET"));
    }

    #[test]
    fn long_error_texts_are_cut() {
        let long = "x".repeat(5000);
        assert_eq!(bounded(&long).chars().count(), MAX_ERROR_CHARS + 1);
        assert_eq!(bounded("short"), "short");
    }
}
