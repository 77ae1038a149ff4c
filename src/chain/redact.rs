//! Node URLs carry credentials: a user and password, an API key in the path (as hosted
//! node providers give them) or in the query. Every text that may hold a node URL — the
//! configuration, a transport error (reqwest prints the URL it failed on), a chain error
//! on its way to a log, `/readyz` or a GraphQL error — goes through [`redact`] first.

/// `text` with every URL in it reduced to its scheme, host and port: user information,
/// path, query and fragment become `***` (`http://***@host:8545/***`). Idempotent.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // The scheme: the letters (and `+-.`) right before `://`.
        let scheme_start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        out.push_str(&rest[..scheme_start]);
        let scheme = &rest[scheme_start..at];
        let after = &rest[at + 3..];
        // The URL ends at white space or a quote; its authority also at `/`, `?` or `#`.
        // Nothing else ends it: a password may hold `)` or `,` unencoded.
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .unwrap_or(after.len());
        let url = &after[..end];
        let authority_end = url.find(['/', '?', '#']).unwrap_or(url.len());
        let authority = &url[..authority_end];
        let host = match authority.rfind('@') {
            Some(i) => {
                out.push_str(scheme);
                out.push_str("://***@");
                &authority[i + 1..]
            }
            None => {
                out.push_str(scheme);
                out.push_str("://");
                authority
            }
        };
        out.push_str(host);
        // Punctuation closing the text around the URL (`(see http://h/p).`) is not its.
        let tail = &url[authority_end..];
        let kept = tail.trim_end_matches([')', ']', '}', '.', ',', ';', ':', '!']);
        if !kept.is_empty() && kept != "/" {
            match kept.as_bytes()[0] {
                b'/' => out.push_str("/***"),
                b'?' => out.push_str("?***"),
                _ => out.push_str("#***"),
            }
        } else {
            out.push_str(kept);
        }
        out.push_str(&tail[kept.len()..]);
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_in_urls_are_replaced() {
        let cases = [
            (
                "error sending request for url (http://user:PASSWORD@127.0.0.1:1/)",
                "error sending request for url (http://***@127.0.0.1:1/)",
            ),
            (
                "https://mainnet.example.com/v3/SECRETKEY?apikey=SECRET#frag",
                "https://mainnet.example.com/***",
            ),
            (
                "https://node.example:8545?token=SECRET",
                "https://node.example:8545?***",
            ),
            ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
            ("http://127.0.0.1:8545/", "http://127.0.0.1:8545/"),
            // A password with characters URLs leave unencoded, and an `@` encoded.
            (
                "(http://u:pa)s,s@h:1/x) and more",
                "(http://***@h:1/***) and more",
            ),
            ("see https://h/v3/KEY.", "see https://h/***."),
            ("at http://h:1/).", "at http://h:1/)."),
            (
                "http://u:p%40ss@host/ and http://a:b@c",
                "http://***@host/ and http://***@c",
            ),
            ("no url here: 0xabc", "no url here: 0xabc"),
            ("ws://", "ws://"),
            ("x://@", "x://***@"),
        ];
        for (text, expected) in cases {
            let redacted = redact(text);
            assert_eq!(redacted, expected, "{text:?}");
            for secret in ["PASSWORD", "SECRET", "pa)s", "p%40ss"] {
                assert!(!redacted.contains(secret), "{text:?} → {redacted:?}");
            }
            assert_eq!(redact(&redacted), redacted, "idempotent");
        }
    }
}
