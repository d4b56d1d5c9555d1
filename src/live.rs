//! The parts of the configuration that a SIGHUP swaps while the gateway runs, compiled.
//!
//! Handshakes read the current [`Live`] once per attempt; sessions read it per message, so a
//! new rate limit or size applies to the next message without touching the session.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::config::{Config, ConfigError, LimitsConfig, ServerConfig};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::origin::OriginPolicy;
use crate::pusher::PusherApps;

/// Compiled live settings.
#[derive(Debug)]
pub struct Live {
    pub origin: OriginPolicy,
    pub verifier: Verifier,
    pub limits: LimitsConfig,
    pub server: ServerConfig,
    pub leeway_secs: u64,
    /// `auth.cookie_name`, empty when cookies are not read.
    pub cookie_name: String,
    /// `[[pusher.apps]]`: none means the Pusher endpoints answer 404.
    pub pusher: PusherApps,
}

impl Live {
    /// Compiles the live settings: the Origin allowlist, the token verifier (algorithms, the
    /// secret, every key file). With [`Config::load`]'s checks of the file itself, this is the
    /// whole of what `check-config`, `serve` and a reload accept.
    pub fn from_config(cfg: &Config) -> Result<Live, ConfigError> {
        let origin = OriginPolicy::new(&cfg.origin).map_err(|e| ConfigError::Invalid {
            key: "origin.allowed",
            message: e.to_string(),
        })?;
        let verifier = Verifier::from_config(&cfg.auth)?;
        let pusher = PusherApps::from_config(&cfg.pusher, &cfg.origin)?;
        Ok(Live {
            origin,
            verifier,
            limits: cfg.limits.clone(),
            server: cfg.server.clone(),
            leeway_secs: cfg.auth.leeway.as_secs(),
            cookie_name: cfg.auth.cookie_name.clone(),
            pusher,
        })
    }
}

/// What every session shares.
pub struct Shared {
    pub live: ArcSwap<Live>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    /// Cancelled at shutdown; every session holds a child.
    pub shutdown: CancellationToken,
}
