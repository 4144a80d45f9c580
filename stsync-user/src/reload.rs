//! Live reload of config.json (SIGHUP, `POST /v1/reload`): the file is read and validated
//! as at start; refused, the running config stays. Else `diff::plan` says what changes and
//! it is applied: the HTTP side's tokens, then the relay's workers, through the same
//! commands the API uses. One reload at a time: they queue on the running config's lock.

pub mod diff;

use crate::access::{Access, SharedAccess};
use crate::config::Config;
use crate::driver::RelayHandle;
use crate::relay::Command;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Mutex;
use tracing::{error, info, warn};

pub struct Reloader {
    path: PathBuf,
    running: Mutex<Config>,
    relay: RelayHandle,
    access: SharedAccess,
}

/// What a reload did, as `POST /v1/reload` answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Summary {
    /// False: the file asks for nothing new (nothing was applied).
    pub changed: bool,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub updated: Vec<Updated>,
    /// Relay-wide fields applied (config.json names).
    pub settings: Vec<String>,
    /// Fields that changed but need a restart: their running values stay.
    pub restart_required: Vec<String>,
    /// Changes the relay refused (a delay too large for the stream's rate, say); the rest
    /// is applied.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Updated {
    pub id: String,
    pub fields: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file cannot be read or is invalid: the text the start would refuse it with.
    #[error("{0}")]
    Invalid(String),
    /// A worker did not answer: the change may be applied on some workers only.
    #[error("the relay did not answer; the reload may be applied in part: reload again")]
    Unavailable,
}

impl Reloader {
    pub fn new(path: PathBuf, running: Config, relay: RelayHandle, access: SharedAccess) -> Self {
        Reloader {
            path,
            running: Mutex::new(running),
            relay,
            access,
        }
    }

    /// Reads config.json again and applies what changed; `trigger` is for the log.
    pub async fn reload(&self, trigger: &str) -> Result<Summary, ReloadError> {
        let mut running = self.running.lock().await;
        let new = match Config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("{e:#}");
                error!(
                    trigger,
                    "config reload refused, the running configuration stays: {msg}"
                );
                return Err(ReloadError::Invalid(msg));
            }
        };
        // Weak tokens pass only on a loopback API, and the API stays where it runs whatever
        // the new file says (`http_listen` needs a restart).
        if !running.http_listen.ip().is_loopback() {
            if let Some((stream, why)) = new.weak_tokens().first() {
                let msg = format!(
                    "invalid config file {}: stream {stream}: the token {why}, and the API \
                     runs on {}, not a loopback address (a new `http_listen` applies only at \
                     a restart)",
                    self.path.display(),
                    running.http_listen
                );
                error!(
                    trigger,
                    "config reload refused, the running configuration stays: {msg}"
                );
                return Err(ReloadError::Invalid(msg));
            }
        }
        let plan = diff::plan(&running, &new);
        if plan.is_empty() {
            info!(trigger, "config reload: no change");
            return Ok(Summary::default());
        }
        for (stream, why) in new.weak_tokens() {
            warn!(
                "stream {stream}: the token {why}; accepted only because the HTTP API listens \
                 on loopback ({}). See README, \"Opening it up\"",
                new.http_listen
            );
        }
        let mut errors = Vec::new();
        // Tokens rotate and removed streams answer 404 at once; added ones only once every
        // worker has them (a key minted before would be for a stream a worker lacks).
        let mut now_access = Access::from_config(&plan.running);
        now_access
            .streams
            .retain(|e| !plan.added.iter().any(|a| a.id == e.id));
        self.publish(now_access);
        let mut cmds: Vec<(Command, String)> = Vec::new();
        for id in &plan.removed {
            let cmd = Command::RemoveStream {
                resource: id.clone(),
            };
            cmds.push((cmd, format!("removing stream {id}")));
        }
        if !plan.settings.is_empty() {
            let cmd = Command::SetLimits(plan.running.relay_limits());
            cmds.push((cmd, "limits".into()));
        }
        for u in &plan.updated {
            let crypto = ["publish_passphrase", "view_passphrase", "pbkeylen"];
            if crypto.iter().any(|f| u.changed(f)) {
                let what = format!("stream {}", u.id);
                cmds.push((Command::UpdateStream(u.cfg.relay()), what));
            }
            if u.changed("delay_ms") {
                let cmd = Command::SetDelay {
                    resource: u.id.clone(),
                    delay_ms: u.cfg.delay_ms,
                };
                cmds.push((cmd, format!("stream {} delay_ms", u.id)));
            }
        }
        for a in &plan.added {
            cmds.push((
                Command::AddStream(a.relay()),
                format!("adding stream {}", a.id),
            ));
        }
        for (cmd, what) in cmds {
            match self.relay.command(cmd).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => errors.push(format!("{what}: {e}")),
                Err(_) => {
                    let e = ReloadError::Unavailable;
                    error!(trigger, "config reload: {e}");
                    return Err(e);
                }
            }
        }
        self.publish(Access::from_config(&plan.running));
        let summary = plan.summary();
        if errors.is_empty() {
            info!(trigger, "config reloaded: {summary}");
        } else {
            warn!(
                trigger,
                "config reloaded, but for: {}; {summary}",
                errors.join("; ")
            );
        }
        if !plan.restart.is_empty() {
            warn!(
                trigger,
                "config reload: {} changed but apply only at a restart; the running values stay",
                plan.restart.join(", ")
            );
        }
        let out = Summary {
            changed: true,
            added: plan.added.iter().map(|s| s.id.clone()).collect(),
            removed: plan.removed.clone(),
            updated: plan
                .updated
                .iter()
                .map(|u| Updated {
                    id: u.id.clone(),
                    fields: u.fields.iter().map(|f| f.to_string()).collect(),
                })
                .collect(),
            settings: plan.settings.iter().map(|f| f.to_string()).collect(),
            restart_required: plan.restart.clone(),
            errors,
        };
        *running = plan.running;
        Ok(out)
    }

    fn publish(&self, access: Access) {
        *self.access.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(access);
    }
}
