//! Session keys, minted ahead over the relay's HTTP API.

use super::shared::{Shared, C};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Session keys minted ahead by a thread of their own, so no SRT loop waits on HTTP (which a
/// busy relay may answer slowly). A key lives 300 s on the relay; older ones are thrown away.
pub struct KeyPool {
    q: Mutex<VecDeque<(String, Instant)>>,
}

const KEY_MAX_AGE: Duration = Duration::from_secs(200);

impl KeyPool {
    pub fn new() -> KeyPool {
        KeyPool {
            q: Mutex::new(VecDeque::new()),
        }
    }

    pub fn take(&self) -> Option<String> {
        let mut q = self.q.lock().expect("keys");
        while let Some((k, t)) = q.pop_front() {
            if t.elapsed() < KEY_MAX_AGE {
                return Some(k);
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.q.lock().expect("keys").len()
    }

    /// Keeps `target` keys ready until `shared.stop`.
    pub fn run(&self, http: SocketAddr, stream: &str, token: &str, target: usize, sh: &Shared) {
        let mut failing = false;
        while !sh.stopping() {
            if self.len() >= target {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            match crate::http::mint_session(None, http, stream, token) {
                Ok(k) => {
                    sh.add(C::KeysMinted, 1);
                    self.q.lock().expect("keys").push_back((k, Instant::now()));
                    if failing {
                        sh.event("minting session keys works again");
                        failing = false;
                    }
                }
                Err(e) => {
                    sh.add(C::KeyFailures, 1);
                    if !failing {
                        sh.event(format!("minting a session key failed: {e:#}"));
                        failing = true;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

impl Default for KeyPool {
    fn default() -> Self {
        Self::new()
    }
}
