//! The PROXY protocol on the public listener (`server.proxy_protocol = true`): which peers may
//! speak it ([`TrustedProxies`]), and reading the one header a load balancer (HAProxy
//! `send-proxy` / `send-proxy-v2`, AWS NLB, …) puts before the client's bytes, to learn the
//! client's address ([`client_address`]). That address is then the connection's `peer`: every
//! per-IP limit and every log line of the connection uses it.
//!
//! Parsing is the `ppp` crate's (v1 text and v2 binary, TLVs included); this module decides
//! how much to read. It peeks at what has arrived, asks the parser whether that is a whole
//! header, the start of one or not one at all, and consumes exactly the header's bytes: what
//! follows (the client's TLS hello) stays in the socket for TLS, so the connection keeps its
//! plain `TcpStream` and needs no replay buffer. A header may arrive in any number of TCP
//! segments; the caller's deadline (`server.handshake_timeout`, which also covers TLS and
//! HTTP) bounds the whole header, and [`MAX_HEADER_BYTES`] its size.
//!
//! Refusals answer nothing (the peer is a balancer, not a browser): the connection is closed
//! before TLS, counted in `wsgate_handshakes_total{result="proxy_refused",reason}` and logged.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use ppp::v1;
use ppp::v2;
use ppp::PartialResult;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tracing::{debug, info};

use crate::metrics::{HandshakeResult, Metrics};

/// Largest header accepted, in bytes. A v1 header is at most 107 bytes (the specification's
/// own bound, which the parser enforces); a v2 header is 16 bytes, the addresses (at most 216,
/// for AF_UNIX) and TLVs. What balancers add in TLVs — AWS's VPC endpoint id, GCP's and
/// Azure's connection ids, HAProxy's unique id (≤ 128 bytes), SNI (≤ 255), TLS details — stays
/// well under a KiB; 4 KiB is also nginx's limit, so a balancer that works in front of nginx
/// works here.
const MAX_HEADER_BYTES: usize = 4096;
/// The read buffer a header starts with: any v1 header, and a v2 header with the largest
/// address block and no TLVs, fit without growing it.
const FIRST_BUFFER_BYTES: usize = V2_FIXED_BYTES + 216;
/// Signature, version/command, family/protocol and length of a v2 header.
const V2_FIXED_BYTES: usize = 16;
/// How a v1 header starts.
const V1_PREFIX: &[u8] = b"PROXY ";
/// Longest v1 header, line end included (the specification's bound).
const V1_MAX_BYTES: usize = 107;

/// `server.trusted_proxies`: the peers allowed to send a PROXY header.
#[derive(Debug, Clone)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies { nets }
    }

    /// Whether `peer` may open connections: logs and counts a refusal. Called at accept,
    /// before anything is read, so an untrusted peer can neither claim an address nor cost a
    /// TLS handshake.
    pub fn admit(&self, peer: SocketAddr, metrics: &Metrics) -> bool {
        // A dual-stack listener sees IPv4 peers as `::ffff:a.b.c.d`; the CIDRs name them as IPv4.
        let ip = peer.ip().to_canonical();
        if self.nets.iter().any(|net| net.contains(&ip)) {
            return true;
        }
        metrics.handshake_refused(HandshakeResult::ProxyRefused, UNTRUSTED);
        info!(peer = %ip, result = "refused", reason = UNTRUSTED, "handshake");
        false
    }
}

/// Refusal reasons, the same in the log line and the metric.
const UNTRUSTED: &str = "untrusted_proxy";
const TIMEOUT: &str = "proxy_header_timeout";

/// Reads the PROXY header that starts the connection from the trusted proxy `proxy`, by
/// `deadline`, and returns the address the connection is for: the client's, or the proxy's
/// own for a `LOCAL` header (the balancer's health checks) and headers that carry no usable
/// address. `None` when the connection must be closed (refusals are logged and counted; a
/// connection that ends before sending anything — a TCP health check — is neither).
pub async fn client_address(
    tcp: &mut TcpStream,
    proxy: SocketAddr,
    deadline: Instant,
    metrics: &Metrics,
) -> Option<SocketAddr> {
    let peer = proxy.ip().to_canonical();
    let refused = |reason: &'static str, detail: &dyn std::fmt::Display| {
        metrics.handshake_refused(HandshakeResult::ProxyRefused, reason);
        info!(%peer, result = "refused", reason, detail = %detail, "handshake");
    };
    match timeout_at(deadline, read(tcp)).await {
        Ok(Ok(Some(Source::Client(client)))) => {
            Some(SocketAddr::new(client.ip().to_canonical(), client.port()))
        }
        Ok(Ok(Some(Source::Proxy))) => Some(proxy),
        Ok(Ok(None)) => {
            debug!(%peer, "connection ended before sending anything");
            None
        }
        Ok(Err(e)) => {
            refused(e.reason(), &e);
            None
        }
        Err(_) => {
            refused(
                TIMEOUT,
                &"no complete PROXY header within server.handshake_timeout",
            );
            None
        }
    }
}

/// Whom a valid header speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A client's connection relayed by the proxy (PROXY command, TCP over IPv4 or IPv6).
    Client(SocketAddr),
    /// The proxy itself: a v2 `LOCAL` header (health checks), or one with no usable address
    /// (v1 `UNKNOWN`, v2 `AF_UNSPEC` or `AF_UNIX`), which the specification says to serve with
    /// the connection's own addresses.
    Proxy,
}

/// Why a connection's first bytes are not a usable PROXY header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// The bytes are not a PROXY header (a client that skipped the balancer, a balancer
    /// without `send-proxy`), or a malformed one. The detail is the parser's, never the bytes.
    #[error("not a valid PROXY protocol header: {0}")]
    Invalid(String),
    #[error("the connection ended inside the PROXY header")]
    Truncated,
    /// A v2 header that announces more than [`MAX_HEADER_BYTES`].
    #[error("a PROXY header of {0} bytes, over the {MAX_HEADER_BYTES}-byte limit")]
    TooLarge(usize),
}

impl HeaderError {
    /// The refusal's `reason`, in the log line and in `wsgate_handshakes_total`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            HeaderError::Invalid(_) | HeaderError::Truncated => "bad_proxy_header",
            HeaderError::TooLarge(_) => "proxy_header_too_large",
        }
    }
}

/// Reads one PROXY header off `tcp` and leaves every byte after it unread. `None` when the
/// connection ended before sending anything (a balancer's TCP health check, a port scan).
async fn read(tcp: &mut TcpStream) -> Result<Option<Source>, HeaderError> {
    // Always has room for what a partial header still needs: a v1 header is complete or
    // refused within 107 bytes, and a v2 header says its length once 16 have arrived.
    let mut buf = vec![0u8; FIRST_BUFFER_BYTES];
    // Bytes of the header consumed so far.
    let mut have = 0;
    loop {
        // Waits until something new has arrived: everything peeked before was consumed.
        let n = tcp.peek(&mut buf[have..]).await.unwrap_or(0);
        if n == 0 {
            return match have {
                0 => Ok(None),
                _ => Err(HeaderError::Truncated),
            };
        }
        let (take, source) = match judge(&buf[..have + n]) {
            Judged::Header { len, source } => (len - have, Some(source)),
            Judged::Partial { total } => {
                if let Some(total) = total {
                    // Checked against the limit by `judge`.
                    buf.resize(buf.len().max(total), 0);
                }
                (n, None)
            }
            Judged::Invalid(e) => return Err(e),
        };
        // These bytes are already in the socket's buffer: this read does not wait.
        if tcp.read_exact(&mut buf[have..have + take]).await.is_err() {
            return Err(HeaderError::Truncated);
        }
        have += take;
        if source.is_some() {
            return Ok(source);
        }
    }
}

/// What the first bytes of a connection are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Judged {
    /// A whole header of `len` bytes (whatever follows it is the client's).
    Header {
        len: usize,
        source: Source,
    },
    /// The start of a header: every byte belongs to it. `total` is its full length once the
    /// header says it (v2).
    Partial {
        total: Option<usize>,
    },
    Invalid(HeaderError),
}

/// Judges `bytes`, the connection's first bytes, whatever has arrived of them.
pub(crate) fn judge(bytes: &[u8]) -> Judged {
    // The v2 signature starts with `\r`, a v1 header with `PROXY`: the first byte tells which.
    match v2::Header::try_from(bytes) {
        Err(v2::ParseError::Prefix) => judge_v1(bytes),
        Err(v2::ParseError::Partial(_, length)) => {
            let total = V2_FIXED_BYTES + length;
            if total > MAX_HEADER_BYTES {
                Judged::Invalid(HeaderError::TooLarge(total))
            } else {
                Judged::Partial { total: Some(total) }
            }
        }
        Err(e) if e.is_incomplete() => Judged::Partial { total: None },
        Err(e) => Judged::Invalid(HeaderError::Invalid(e.to_string())),
        Ok(header) => {
            // TLVs are ignored (none changes whom the connection is for), but must be well
            // formed: a header whose length disagrees with its contents is not trusted.
            if let Some(Err(e)) = header.tlvs().find(Result::is_err) {
                return Judged::Invalid(HeaderError::Invalid(e.to_string()));
            }
            let source = match (header.command, header.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => client_v4(a),
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => client_v6(a),
                _ => Source::Proxy,
            };
            Judged::Header {
                len: header.len(),
                source,
            }
        }
    }
}

/// Judges what may be a v1 header. The parser sees it only once its line has ended: its own
/// judgement of a line still arriving is not reliable (`PROXY TCP4 a b 51234 ` — the
/// destination port still to come — reads as an invalid port).
fn judge_v1(bytes: &[u8]) -> Judged {
    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
        return if !(bytes.starts_with(V1_PREFIX) || V1_PREFIX.starts_with(bytes)) {
            Judged::Invalid(HeaderError::Invalid(
                "it does not start with \"PROXY \"".into(),
            ))
        } else if bytes.len() >= V1_MAX_BYTES {
            Judged::Invalid(HeaderError::Invalid(format!(
                "no line end within {V1_MAX_BYTES} bytes"
            )))
        } else {
            Judged::Partial { total: None }
        };
    };
    // The line must end with `\r\n`. The parser also takes a line that ends with a space
    // and a bare `\n` (`PROXY UNKNOWN \n`, `... 51234 8443 \n`), reading the space as the
    // separator before the line end; the specification allows no such line.
    if end == 0 || bytes[end - 1] != b'\r' {
        return Judged::Invalid(HeaderError::Invalid(
            "the header line does not end with \\r\\n".into(),
        ));
    }
    match v1::Header::try_from(&bytes[..=end]) {
        // The header is the whole line, or the line is not a header.
        Ok(header) if header.header.len() != end + 1 => Judged::Invalid(HeaderError::Invalid(
            "a carriage return inside the header line".into(),
        )),
        Ok(header) => {
            let source = match header.addresses {
                v1::Addresses::Tcp4(a) => client_v4(a),
                v1::Addresses::Tcp6(a) => client_v6(a),
                v1::Addresses::Unknown => Source::Proxy,
            };
            Judged::Header {
                len: header.header.len(),
                source,
            }
        }
        Err(e) => Judged::Invalid(HeaderError::Invalid(e.to_string())),
    }
}

// v1 and v2 share these address types.
fn client_v4(a: ppp::v1::IPv4) -> Source {
    Source::Client(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
}

fn client_v6(a: ppp::v1::IPv6) -> Source {
    Source::Client(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, Type};
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;

    const CLIENT_V4: &str = "203.0.113.7:51234";
    const CLIENT_V6: &str = "[2001:db8::7]:51234";
    const GATEWAY: &str = "10.0.0.11:8443";
    /// What a TLS client sends first; it must stay unread after the header.
    const HELLO: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";

    fn v2_proxy(client: &str, tlvs: &[(Type, &[u8])]) -> Vec<u8> {
        let addresses: v2::Addresses = (
            client.parse::<SocketAddr>().unwrap(),
            if client.starts_with('[') {
                "[2001:db8::11]:8443".parse().unwrap()
            } else {
                GATEWAY.parse().unwrap()
            },
        )
            .into();
        let mut b = Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            addresses,
        );
        for (kind, value) in tlvs {
            b = b.write_tlv(*kind, value).unwrap();
        }
        b.build().unwrap()
    }

    fn v2_local() -> Vec<u8> {
        Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .unwrap()
    }

    fn client(addr: &str) -> Source {
        Source::Client(addr.parse().unwrap())
    }

    /// Headers and whom they speak for, as balancers send them.
    fn headers() -> Vec<(Vec<u8>, Source)> {
        vec![
            (
                b"PROXY TCP4 203.0.113.7 10.0.0.11 51234 8443\r\n".to_vec(),
                client(CLIENT_V4),
            ),
            (
                b"PROXY TCP6 2001:db8::7 2001:db8::11 51234 8443\r\n".to_vec(),
                client(CLIENT_V6),
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), Source::Proxy),
            (
                b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n".to_vec(),
                Source::Proxy,
            ),
            (v2_proxy(CLIENT_V4, &[]), client(CLIENT_V4)),
            (v2_proxy(CLIENT_V6, &[]), client(CLIENT_V6)),
            (
                // What AWS NLB and HAProxy with `proxy-v2-options` add.
                v2_proxy(
                    CLIENT_V4,
                    &[
                        (Type::Authority, b"chat.example.com"),
                        (Type::UniqueId, &[7; 64]),
                        (Type::NoOp, &[0; 3]),
                    ],
                ),
                client(CLIENT_V4),
            ),
            (v2_local(), Source::Proxy),
        ]
    }

    #[test]
    fn every_header_is_read_to_its_last_byte_whatever_arrived_so_far() {
        for (header, source) in headers() {
            let mut stream = header.clone();
            stream.extend_from_slice(HELLO);
            // Every way the bytes can have arrived: the first k of them.
            for k in 0..=stream.len() {
                let judged = judge(&stream[..k]);
                if k < header.len() {
                    assert!(
                        matches!(judged, Judged::Partial { .. }),
                        "{k} of {:?}: {judged:?}",
                        String::from_utf8_lossy(&header)
                    );
                } else {
                    assert_eq!(
                        judged,
                        Judged::Header {
                            len: header.len(),
                            source
                        },
                        "{k} of {:?}",
                        String::from_utf8_lossy(&header)
                    );
                }
            }
        }
    }

    #[test]
    fn what_is_not_a_header_is_refused_as_soon_as_it_shows() {
        let mut bad_tlv = v2_proxy(CLIENT_V4, &[(Type::NoOp, &[0; 8])]);
        // The TLV claims 9 bytes where 8 are left.
        let at = bad_tlv.len() - 9;
        bad_tlv[at] = 9;
        // A TLS hello or plain HTTP (a client that skipped the balancer) shows at once.
        for first in [&HELLO[..1], b"G"] {
            assert!(matches!(judge(first), Judged::Invalid(_)), "{first:?}");
        }
        let mut bad_version = v2_local();
        bad_version[12] = 0x10;
        for bytes in [
            HELLO.to_vec(),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            b"PROXY TCP4 203.0.113.7 10.0.0.11 51234\r\n".to_vec(),
            b"PROXY TCP4 2001:db8::7 10.0.0.11 51234 8443\r\n".to_vec(),
            b"PROXY TCP4 203.0.113.7 10.0.0.11 051234 8443\r\n".to_vec(),
            b"PROXY TCP4 203.0.113.7 10.0.0.11 51234 8443\n".to_vec(),
            // A space before a bare line feed is no line end either.
            b"PROXY TCP4 203.0.113.7 10.0.0.11 51234 8443 \n".to_vec(),
            b"PROXY UNKNOWN 2001:db8::7 2001 \n\r\n".to_vec(),
            b"PROXY UNKNOWN \n".to_vec(),
            b"PROXY UNKNOWN \r \r\n".to_vec(),
            b"PROXY UDP4 203.0.113.7 10.0.0.11 51234 8443\r\n".to_vec(),
            b"proxy TCP4 203.0.113.7 10.0.0.11 51234 8443\r\n".to_vec(),
            // No line end within v1's 107 bytes.
            [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 120]].concat(),
            bad_tlv,
            bad_version,
        ] {
            let judged = judge(&bytes);
            assert!(
                matches!(judged, Judged::Invalid(HeaderError::Invalid(_))),
                "{:?}: {judged:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn a_v2_header_over_the_limit_is_refused_from_its_fixed_part() {
        let mut big = v2_local();
        let declared = (MAX_HEADER_BYTES - V2_FIXED_BYTES + 1) as u16;
        big[14..16].copy_from_slice(&declared.to_be_bytes());
        assert_eq!(
            judge(&big[..V2_FIXED_BYTES]),
            Judged::Invalid(HeaderError::TooLarge(MAX_HEADER_BYTES + 1))
        );
        let tlv = [1u8; MAX_HEADER_BYTES - V2_FIXED_BYTES - 12 - 3];
        let largest = v2_proxy(CLIENT_V4, &[(Type::NoOp, &tlv)]);
        assert_eq!(largest.len(), MAX_HEADER_BYTES);
        assert!(matches!(judge(&largest), Judged::Header { .. }));
    }

    proptest! {
        #[test]
        fn any_bytes_are_judged_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Judged::Header { len, .. } = judge(&bytes) {
                prop_assert!(len <= bytes.len());
            }
        }

        #[test]
        fn any_bytes_after_a_v2_signature_are_judged_without_panic(
            rest in proptest::collection::vec(any::<u8>(), 0..300)
        ) {
            let bytes = [v2::PROTOCOL_PREFIX, &rest].concat();
            if let Judged::Header { len, .. } = judge(&bytes) {
                prop_assert!(len <= bytes.len());
            }
        }
    }

    /// A connected pair of loopback sockets: (writer, the gateway's side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let writer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (writer, server)
    }

    #[tokio::test]
    async fn reading_consumes_the_header_and_leaves_the_tls_hello() {
        for (header, source) in headers() {
            let (mut writer, mut server) = pair().await;
            writer.set_nodelay(true).unwrap();
            // The header in three writes, the hello in the same write as its tail.
            let (a, rest) = header.split_at(5);
            let (b, c) = rest.split_at(rest.len() / 2);
            let reader = tokio::spawn(async move {
                let got = read(&mut server).await;
                (got, server)
            });
            writer.write_all(a).await.unwrap();
            writer.write_all(b).await.unwrap();
            writer.write_all(&[c, HELLO].concat()).await.unwrap();
            let (got, mut server) = reader.await.unwrap();
            assert_eq!(got, Ok(Some(source)));
            let mut after = vec![0u8; HELLO.len()];
            server.read_exact(&mut after).await.unwrap();
            assert_eq!(after, HELLO, "nothing after the header was consumed");
        }
    }

    #[tokio::test]
    async fn a_connection_that_ends_early_sent_nothing_or_a_truncated_header() {
        let (writer, mut server) = pair().await;
        drop(writer);
        assert_eq!(read(&mut server).await, Ok(None));
        let (mut writer, mut server) = pair().await;
        writer.write_all(b"PROXY TCP4 203.0.").await.unwrap();
        drop(writer);
        assert_eq!(read(&mut server).await, Err(HeaderError::Truncated));
    }

    #[test]
    fn trusted_proxies_match_their_cidrs_and_ipv4_mapped_peers() {
        let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let metrics = Metrics::new();
        assert!(trusted.admit("10.1.2.3:4000".parse().unwrap(), &metrics));
        assert!(trusted.admit("[::ffff:10.1.2.3]:4000".parse().unwrap(), &metrics));
        assert!(!trusted.admit("192.0.2.1:4000".parse().unwrap(), &metrics));
        assert!(metrics.encode().contains(
            "wsgate_handshakes_total{result=\"proxy_refused\",reason=\"untrusted_proxy\"} 1"
        ));
    }
}
