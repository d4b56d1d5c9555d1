//! The Origin allowlist, compiled once from `[origin]` and checked at every handshake.
//!
//! Origins compare the way browsers serialize them: scheme and host case-insensitive, the
//! scheme's default port equal to no port. `https://*.example.com` matches one or more labels
//! before `.example.com`, never `example.com` itself nor `evilexample.com`. A wildcard directly
//! over a public suffix (`*.com`, `*.co.uk`, `*.github.io`: both sections of the Public Suffix
//! List, compiled in by the `psl` crate) is refused, since it would admit every site of unrelated
//! owners under that suffix.

use crate::config::OriginConfig;

/// A compiled allowlist.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    entries: Vec<Pattern>,
    allow_missing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    scheme: String,
    host: HostPattern,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Subdomains(String),
}

/// A parsed `Origin` header value or allowlist entry.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OriginError {
    #[error("{0:?} is not an origin (scheme://host[:port], no path)")]
    Malformed(String),
    #[error("{0:?}: a wildcard is only allowed as the first label, as in https://*.example.com")]
    BadWildcard(String),
    #[error("{entry:?}: {suffix:?} is a public suffix (Public Suffix List), so the wildcard would admit every site registered under it; name your own domain, as in https://*.example.com")]
    PublicSuffix { entry: String, suffix: String },
}

/// Why a handshake's Origin was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginRefusal {
    Missing,
    NotAllowed,
}

impl OriginPolicy {
    pub fn new(cfg: &OriginConfig) -> Result<Self, OriginError> {
        let entries = cfg
            .allowed
            .iter()
            .map(|s| Pattern::parse(s))
            .collect::<Result<_, _>>()?;
        Ok(OriginPolicy {
            entries,
            allow_missing: cfg.allow_missing,
        })
    }

    /// Checks the `Origin` header (`None` when absent).
    pub fn check(&self, origin: Option<&str>) -> Result<(), OriginRefusal> {
        let Some(value) = origin else {
            return if self.allow_missing {
                Ok(())
            } else {
                Err(OriginRefusal::Missing)
            };
        };
        let origin = Origin::parse(value).map_err(|_| OriginRefusal::NotAllowed)?;
        if self.entries.iter().any(|p| p.matches(&origin)) {
            Ok(())
        } else {
            Err(OriginRefusal::NotAllowed)
        }
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "https" | "wss" => Some(443),
        "http" | "ws" => Some(80),
        _ => None,
    }
}

impl Origin {
    fn parse(s: &str) -> Result<Origin, OriginError> {
        let bad = || OriginError::Malformed(s.to_string());
        let (scheme, rest) = s.split_once("://").ok_or_else(bad)?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
        {
            return Err(bad());
        }
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ', '\\']) {
            return Err(bad());
        }
        let (host, port) = split_host_port(rest).ok_or_else(bad)?;
        let port = match port {
            Some(p) => p,
            None => default_port(&scheme).ok_or_else(bad)?,
        };
        let host = host.to_ascii_lowercase();
        let valid_host = if host.starts_with('[') {
            host.ends_with(']')
                && host[1..host.len() - 1]
                    .parse::<std::net::Ipv6Addr>()
                    .is_ok()
        } else {
            !host.is_empty()
                && host.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'*' || b == b'_'
                })
        };
        if !valid_host {
            return Err(bad());
        }
        Ok(Origin { scheme, host, port })
    }
}

/// Splits `host[:port]` (with `[v6]` hosts); `None` on a bad port.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']')?;
        let (h, rest) = s.split_at(end + 1);
        match rest.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if rest.is_empty() => (h, None),
            None => return None,
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
        None => None,
    };
    Some((host, port))
}

impl Pattern {
    fn parse(s: &str) -> Result<Pattern, OriginError> {
        let o = Origin::parse(s)?;
        let host = if let Some(suffix) = o.host.strip_prefix("*.") {
            if suffix.contains('*') || suffix.is_empty() {
                return Err(OriginError::BadWildcard(s.to_string()));
            }
            if is_public_suffix(suffix) {
                return Err(OriginError::PublicSuffix {
                    entry: s.to_string(),
                    suffix: suffix.to_string(),
                });
            }
            HostPattern::Subdomains(format!(".{suffix}"))
        } else if o.host.contains('*') {
            return Err(OriginError::BadWildcard(s.to_string()));
        } else {
            HostPattern::Exact(o.host)
        };
        Ok(Pattern {
            scheme: o.scheme,
            host,
            port: o.port,
        })
    }

    fn matches(&self, o: &Origin) -> bool {
        if self.scheme != o.scheme || self.port != o.port || o.host.contains('*') {
            return false;
        }
        match &self.host {
            HostPattern::Exact(h) => *h == o.host,
            HostPattern::Subdomains(suffix) => {
                o.host.len() > suffix.len()
                    && o.host.ends_with(suffix.as_str())
                    && !o.host[..o.host.len() - suffix.len()].ends_with('.')
            }
        }
    }
}

/// Whether `domain` (lowercase) is itself a public suffix, in the list's ICANN or private
/// section. A name under a TLD the list does not know follows the list's implicit `*` rule:
/// that TLD is a suffix (`internal`, `localhost`), so `*.internal` is refused while
/// `*.corp.internal` is not.
fn is_public_suffix(domain: &str) -> bool {
    psl::suffix(domain.as_bytes()).is_some_and(|s| s.as_bytes().len() == domain.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str], allow_missing: bool) -> OriginPolicy {
        OriginPolicy::new(&OriginConfig {
            allowed: allowed.iter().map(|s| s.to_string()).collect(),
            allow_missing,
        })
        .expect("valid policy")
    }

    #[test]
    fn exact_origins_compare_like_browsers() {
        let p = policy(
            &["https://Chat.Example.com", "http://localhost:8080"],
            false,
        );
        assert_eq!(p.check(Some("https://chat.example.com")), Ok(()));
        assert_eq!(p.check(Some("HTTPS://CHAT.EXAMPLE.COM:443")), Ok(()));
        assert_eq!(p.check(Some("http://localhost:8080")), Ok(()));
        assert_eq!(
            p.check(Some("http://localhost")),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(
            p.check(Some("https://chat.example.com:8443")),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(
            p.check(Some("http://chat.example.com")),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(p.check(Some("null")), Err(OriginRefusal::NotAllowed));
        assert_eq!(p.check(None), Err(OriginRefusal::Missing));
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let p = policy(&["https://*.example.com"], false);
        assert_eq!(p.check(Some("https://a.example.com")), Ok(()));
        assert_eq!(p.check(Some("https://a.b.example.com")), Ok(()));
        assert_eq!(
            p.check(Some("https://example.com")),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(
            p.check(Some("https://evilexample.com")),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(
            p.check(Some("https://.example.com")),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(
            p.check(Some("https://a.example.com.evil.net")),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(
            p.check(Some("https://*.example.com")),
            Err(OriginRefusal::NotAllowed)
        );
    }

    #[test]
    fn allow_missing_admits_non_browser_clients() {
        let p = policy(&[], true);
        assert_eq!(p.check(None), Ok(()));
        assert_eq!(
            p.check(Some("https://x.example")),
            Err(OriginRefusal::NotAllowed)
        );
    }

    #[test]
    fn malformed_entries_fail_at_startup() {
        for bad in [
            "example.com",
            "https://a.example.com/path",
            "https://a.*.com",
            "https://x:99999",
        ] {
            let r = OriginPolicy::new(&OriginConfig {
                allowed: vec![bad.to_string()],
                allow_missing: false,
            });
            assert!(r.is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn header_with_path_or_userinfo_is_refused() {
        let p = policy(&["https://a.example"], false);
        assert_eq!(
            p.check(Some("https://a.example/")),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(
            p.check(Some("https://user@a.example")),
            Err(OriginRefusal::NotAllowed)
        );
    }

    #[test]
    fn wildcard_over_a_public_suffix_is_refused() {
        for entry in [
            "https://*.com",
            "https://*.COM:8443",
            "https://*.com.",
            "https://*.co.uk",
            "https://*.github.io",
            "https://*.blogspot.com",
            "https://*.internal",
            "http://*.localhost:8080",
        ] {
            let r = OriginPolicy::new(&OriginConfig {
                allowed: vec![entry.to_string()],
                allow_missing: false,
            });
            assert!(
                matches!(r, Err(OriginError::PublicSuffix { .. })),
                "{entry}: {r:?}"
            );
        }
    }

    #[test]
    fn wildcard_under_a_registrable_domain_is_kept() {
        let p = policy(
            &[
                "https://*.example.com",
                "https://*.example.co.uk",
                "https://*.alice.github.io",
                "https://*.corp.internal",
            ],
            false,
        );
        for ok in [
            "https://a.example.com",
            "https://x.example.co.uk",
            "https://app.alice.github.io",
            "https://chat.corp.internal",
        ] {
            assert_eq!(p.check(Some(ok)), Ok(()), "{ok}");
        }
        for refused in [
            "https://evil.com",
            "https://bob.github.io",
            "https://x.co.uk",
        ] {
            assert_eq!(
                p.check(Some(refused)),
                Err(OriginRefusal::NotAllowed),
                "{refused}"
            );
        }
    }
}
