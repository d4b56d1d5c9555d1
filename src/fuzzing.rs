//! Entry points for the fuzz targets in `fuzz/`: the private parsing steps they drive, in
//! plain types. Not part of the gateway's interface; everything else they use is public.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::config::{Config, ConfigError};
use crate::gateway::proxy_header::{judge, Judged, Source};

/// [`Config::load`] of a TOML text, with an empty environment: the same merge and checks.
pub fn load_config_str(toml: &str) -> Result<Config, ConfigError> {
    Config::load_toml_str(toml, HashMap::new())
}

/// What the PROXY-protocol reader makes of a connection's first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A whole header of `len` bytes for `client`; `None`: the proxy's own connection.
    Header {
        len: usize,
        client: Option<SocketAddr>,
    },
    /// The start of a header; `total` once a v2 header has said its length.
    Partial { total: Option<usize> },
    /// Refused, with the reason the log line and the metric give.
    Invalid { reason: &'static str },
}

/// Judges `bytes`, the first bytes of a connection from a trusted proxy.
pub fn judge_proxy_header(bytes: &[u8]) -> ProxyHeader {
    match judge(bytes) {
        Judged::Header { len, source } => ProxyHeader::Header {
            len,
            client: match source {
                Source::Client(addr) => Some(addr),
                Source::Proxy => None,
            },
        },
        Judged::Partial { total } => ProxyHeader::Partial { total },
        Judged::Invalid(e) => ProxyHeader::Invalid { reason: e.reason() },
    }
}
