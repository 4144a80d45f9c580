//! The API's part of config.json: the streams with their tokens (who may do what) and the
//! metrics' series cap. A reload builds a new one and swaps it whole; a request reads the
//! one current when it starts.

use crate::config::Config;
use std::sync::{Arc, RwLock};

pub struct StreamEntry {
    pub id: String,
    pub name: String,
    pub token: String,
}

/// The configured streams and tokens, and the series cap.
pub struct Access {
    pub streams: Vec<StreamEntry>,
    /// config.json `admin_token`: every stream's endpoints and the relay-wide ones.
    pub admin_token: Option<String>,
    /// config.json `metrics_max_connections`: connections with series of their own.
    pub metrics_max_connections: usize,
}

impl Access {
    pub fn from_config(cfg: &Config) -> Access {
        Access {
            streams: cfg
                .streams
                .iter()
                .map(|s| StreamEntry {
                    id: s.id.clone(),
                    name: s.name.clone(),
                    token: s.token.clone(),
                })
                .collect(),
            admin_token: cfg.admin_token.clone(),
            metrics_max_connections: cfg.metrics_max_connections,
        }
    }
}

/// A request reads the `Access` current when it starts (a reload swaps it).
pub type SharedAccess = Arc<RwLock<Arc<Access>>>;
