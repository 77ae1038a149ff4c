//! Where webhooks may be sent: the URL rules, and a DNS resolver that refuses private
//! addresses at connection time too (a name that resolved to a public address when the
//! endpoint was registered may point inside the network later).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The rules an endpoint URL is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetPolicy {
    /// Only `https` URLs (production).
    pub require_https: bool,
    /// Loopback, private, link-local and other non-public addresses may be targets.
    pub allow_private: bool,
}

impl TargetPolicy {
    /// Development: anything, plain http and loopback included.
    pub const OPEN: TargetPolicy = TargetPolicy {
        require_https: false,
        allow_private: true,
    };

    /// Checks a URL as registered; returns it normalised, or why it is refused.
    pub fn check_url(&self, raw: &str) -> Result<url::Url, String> {
        if raw.len() > 2048 {
            return Err("the URL is longer than 2048 characters".into());
        }
        let url = url::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
        match url.scheme() {
            "https" => {}
            "http" if !self.require_https => {}
            "http" => return Err("only https URLs are accepted in production".into()),
            other => return Err(format!("the scheme {other:?} is not http(s)")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("a URL with credentials is refused: use the signature".into());
        }
        let host = url.host().ok_or("the URL has no host")?;
        if !self.allow_private {
            let ip = match host {
                url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
                url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
                url::Host::Domain(d)
                    if d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost") =>
                {
                    Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
                }
                url::Host::Domain(_) => None,
            };
            if let Some(ip) = ip
                && !is_public(ip)
            {
                return Err(format!(
                    "{ip} is not a public address (set WALLET_WEBHOOK_ALLOW_PRIVATE_TARGETS to allow it)"
                ));
            }
        }
        Ok(url)
    }
}

/// Whether `ip` is an address on the public internet: not loopback, private, link-local,
/// shared (CGNAT), documentation, multicast, unspecified or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || (first == 0x0064 && ip.segments()[1] == 0xff9b)) // NAT64 (may reach IPv4 private)
}

/// Resolves with the system resolver and drops every address the policy forbids; a name
/// with none left is an error (the attempt is recorded as refused).
#[derive(Clone, Copy, Debug)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_refuses_private_and_plain_targets() {
        let prod = TargetPolicy {
            require_https: true,
            allow_private: false,
        };
        for bad in [
            "http://example.com/hook",
            "https://127.0.0.1/hook",
            "https://localhost/hook",
            "https://10.1.2.3/hook",
            "https://172.16.0.1/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://0.0.0.0/",
            "https://user:pass@example.com/",
            "ftp://example.com/",
            "not a url",
        ] {
            assert!(prod.check_url(bad).is_err(), "{bad} should be refused");
        }
        assert!(prod.check_url("https://hooks.example.com/wallet").is_ok());
        assert!(prod.check_url("https://93.184.216.34/x").is_ok());
        let allowed = TargetPolicy {
            require_https: true,
            allow_private: true,
        };
        assert!(allowed.check_url("https://10.1.2.3/hook").is_ok());
        assert!(TargetPolicy::OPEN.check_url("http://127.0.0.1:9/").is_ok());
    }
}
