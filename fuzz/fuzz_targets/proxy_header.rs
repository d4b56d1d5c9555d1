//! A connection's first bytes through the gateway's PROXY-protocol reader
//! (`gateway::proxy_header`), and the trusted-proxy decision for the peer.
//!
//! Input: 16 bytes of peer address (an IPv6 address; `::ffff:a.b.c.d` for IPv4), then the
//! bytes the peer sends.
//!
//! Invariants: no panic; an accepted header is no longer than the input, starts with
//! `PROXY ` (v1: one line, at most 107 bytes, ending `\r\n`) or the 12-byte v2 signature (v2:
//! 16 bytes plus the length it declares, at most 4 KiB); it is judged the same with nothing
//! after it or anything else after it, and every shorter prefix of it is judged incomplete
//! (the reader consumes exactly the header, however the bytes arrive); the trust decision
//! matches the configured CIDRs, IPv4-mapped peers as IPv4.
#![no_main]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wsgate::fuzzing::{judge_proxy_header, ProxyHeader};
use wsgate::gateway::proxy_header::TrustedProxies;
use wsgate::metrics::Metrics;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn trusted() -> &'static (TrustedProxies, Metrics) {
    static T: OnceLock<(TrustedProxies, Metrics)> = OnceLock::new();
    T.get_or_init(|| {
        let nets = ["10.0.0.0/8", "192.168.1.0/24", "::1/128", "2001:db8::/32"]
            .iter()
            .map(|s| s.parse().expect("CIDR"))
            .collect();
        (TrustedProxies::new(nets), Metrics::new())
    })
}

/// Whether `ip` is in the trusted networks, computed from its bytes.
fn is_trusted(ip: Ipv6Addr) -> bool {
    let o = ip.octets();
    if o[..10] == [0; 10] && o[10..12] == [0xff, 0xff] {
        return o[12] == 10 || o[12..15] == [192, 168, 1];
    }
    ip == Ipv6Addr::LOCALHOST || o[..4] == [0x20, 0x01, 0x0d, 0xb8]
}

fuzz_target!(|input: &[u8]| {
    let Some((peer, bytes)) = input.split_first_chunk::<16>() else {
        return;
    };
    let peer = Ipv6Addr::from(*peer);
    let (proxies, metrics) = trusted();
    let addr = SocketAddr::new(IpAddr::V6(peer), 4000);
    assert_eq!(proxies.admit(addr, metrics), is_trusted(peer), "{peer}");

    match judge_proxy_header(bytes) {
        ProxyHeader::Header { len, client } => {
            assert!(len <= bytes.len(), "{len} > {}", bytes.len());
            let header = &bytes[..len];
            if header.starts_with(b"PROXY ") {
                assert!(len <= 107, "v1 header of {len} bytes");
                assert!(header.ends_with(b"\r\n"));
                assert_eq!(header.iter().filter(|b| **b == b'\n').count(), 1);
            } else {
                assert!(
                    header.starts_with(V2_SIGNATURE),
                    "accepted without a prefix"
                );
                assert!(len >= 16 && len <= 4096);
                assert_eq!(
                    len,
                    16 + u16::from_be_bytes([header[14], header[15]]) as usize
                );
            }
            let judged = ProxyHeader::Header { len, client };
            assert_eq!(judge_proxy_header(header), judged, "alone");
            let mut more = header.to_vec();
            more.extend_from_slice(b"\x16\x03\x01\n");
            assert_eq!(judge_proxy_header(&more), judged, "with more after it");
            let step = (len / 64).max(1);
            for k in (0..len).step_by(step).chain([len - 1]) {
                assert!(
                    matches!(
                        judge_proxy_header(&header[..k]),
                        ProxyHeader::Partial { .. }
                    ),
                    "prefix of {k} of {len}"
                );
            }
        }
        ProxyHeader::Partial { total } => {
            let v1 = bytes.starts_with(b"PROXY ") || b"PROXY ".starts_with(bytes);
            let v2 = bytes.starts_with(V2_SIGNATURE) || V2_SIGNATURE.starts_with(bytes);
            assert!(v1 || v2, "incomplete, yet neither v1 nor v2");
            if v1 && !v2 {
                assert!(bytes.len() < 107 && !bytes.contains(&b'\n'));
                assert_eq!(total, None);
            }
            if let Some(total) = total {
                assert!(total <= 4096 && total > bytes.len());
            }
        }
        ProxyHeader::Invalid { reason } => {
            assert!(matches!(
                reason,
                "bad_proxy_header" | "proxy_header_too_large"
            ));
        }
    }
});
