//! The session keys an edge's pulls need (`relay::pull`), minted at their upstreams' APIs
//! off the relay's thread: the relay asks, a blocking task calls the API and resolves the
//! upstream's SRT address, and the answer comes back to the driver as a message.

use crate::api::client::Client;
use crate::config::Upstream;
use crate::relay::{PullAnswer, PullRequest, Pulled};
use crate::srt::crypto::KeyMaterial;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Each pulled stream's upstreams, by resource.
pub type Upstreams = Arc<HashMap<String, Vec<Upstream>>>;

pub struct PullKeys {
    upstreams: Upstreams,
    tx: mpsc::UnboundedSender<(PullRequest, PullAnswer)>,
    rx: mpsc::UnboundedReceiver<(PullRequest, PullAnswer)>,
}

impl PullKeys {
    pub fn new(upstreams: Upstreams) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        PullKeys { upstreams, tx, rx }
    }

    /// Starts minting what `req` asks for. The relay asks once per attempt, and backs off
    /// between attempts, so at most one call per pulled stream is under way.
    pub fn request(&self, req: PullRequest) {
        let Some(u) = self
            .upstreams
            .get(&req.resource)
            .and_then(|l| l.get(req.upstream))
            .cloned()
        else {
            let _ = self.tx.send((req, Err("no such upstream".into())));
            return;
        };
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let answer = mint(&u, &req.resource);
            let _ = tx.send((req, answer));
        });
    }

    /// The next answer (pending forever when none is under way).
    pub async fn answered(&mut self) -> (PullRequest, PullAnswer) {
        match self.rx.recv().await {
            Some(a) => a,
            // Unreachable (this holds a sender), but never busy-loop.
            None => std::future::pending().await,
        }
    }
}

fn mint(u: &Upstream, resource: &str) -> PullAnswer {
    let peer = resolve(&u.srt)?;
    let minted = Client::new(&u.api, Some(&u.token))
        .create_session(resource)
        .map_err(|e| format!("{}: {e}", u.api))?;
    // A key minted with a passphrase of its own asks for that one, else the configured.
    let km = match minted.passphrase.or_else(|| u.passphrase.clone()) {
        None => None,
        Some(pass) => Some((keying_material(&pass, u.pbkeylen.unwrap_or(16))?, pass)),
    };
    Ok(Pulled {
        peer,
        key: minted.session_id,
        km,
    })
}

/// A fresh random stream key of `len` bytes under a fresh salt, sealed with `passphrase`,
/// as libsrt's caller offers it in its conclusion (KMREQ).
fn keying_material(passphrase: &str, len: u8) -> Result<Vec<u8>, String> {
    let key: Vec<u8> = (0..len).map(|_| rand::random()).collect();
    let km = KeyMaterial::seal(passphrase.as_bytes(), rand::random(), Some(&key), None)
        .map_err(|e| format!("sealing our keys: {e}"))?;
    let mut out = Vec::new();
    km.encode(&mut out);
    Ok(out)
}

/// `host:port`, an IPv4 address preferred (the relay's socket is usually IPv4).
fn resolve(srt: &str) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = srt
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {srt}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{srt} resolves to no address"))
}
