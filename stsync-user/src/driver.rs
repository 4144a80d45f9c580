//! The IO driver: on each worker, one task owns the worker's relay and datapath and moves
//! data one way between them. Datagrams, timers, the other workers' feeds, the HTTP side's
//! requests and the datapath's reports go into the relay; what it lends out (datagrams,
//! route events) goes to the datapath. Nothing on this path awaits a peer.

use crate::datapath::{Datapath, DatapathStats};
use crate::os::mmsg::RecvBatch;
use crate::pull_keys::PullKeys;
use crate::relay::{Command, CommandError, Relay, Reply, Snapshot};
use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{info, warn};

/// Datagrams read per `recvmmsg` and handled per wake-up before output is flushed, so a
/// busy socket cannot starve timers or delay sends.
const RECV_BATCH: usize = 64;
// A datagram cut to a receive slot is longer than any the relay takes: refused, not misread.
const _: () = assert!(crate::os::mmsg::RECV_SLOT > stsync_common::srt::MAX_DATAGRAM);
/// At most this many datagrams are read to empty the socket before the datapath's poll.
const DRAIN_MAX: usize = 4096;
/// How long the HTTP side waits for the relay's answer before it gives up (503).
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// What the HTTP side asks the driver.
enum Request {
    Stats(oneshot::Sender<(Snapshot, DatapathStats)>),
    Command(Command, oneshot::Sender<Result<Reply, CommandError>>),
}

/// The HTTP side's way to the relay's workers: requests are answered between two batches
/// of datagrams.
#[derive(Clone)]
pub struct RelayHandle(Vec<mpsc::Sender<Request>>);

/// The relay did not answer (stopped, or busier than `ANSWER_WITHIN`).
#[derive(Debug, thiserror::Error)]
#[error("the relay did not answer")]
pub struct Unavailable;

impl RelayHandle {
    /// A handle to `workers` drivers and the receiving end each takes.
    pub fn new(workers: usize) -> (RelayHandle, Vec<Requests>) {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..workers.max(1)).map(|_| mpsc::channel(64)).unzip();
        (RelayHandle(tx), rx.into_iter().map(Requests).collect())
    }

    async fn ask<T>(
        &self,
        worker: usize,
        req: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, Unavailable> {
        let (tx, rx) = oneshot::channel();
        self.0[worker]
            .send(req(tx))
            .await
            .map_err(|_| Unavailable)?;
        match tokio::time::timeout(ANSWER_WITHIN, rx).await {
            Ok(Ok(v)) => Ok(v),
            _ => Err(Unavailable),
        }
    }

    /// The relay's and the datapath's counters, every worker's merged.
    pub async fn stats(&self) -> Result<(Snapshot, DatapathStats), Unavailable> {
        let (mut snap, mut dp) = self.ask(0, Request::Stats).await?;
        for w in 1..self.0.len() {
            let (s, d) = self.ask(w, Request::Stats).await?;
            snap.merge(s);
            dp.merge(d);
        }
        Ok((snap, dp))
    }

    /// A session key is minted once (the keys are shared); a connection is closed by the
    /// worker that owns it; a stream's delay and a reload's changes are made on every
    /// worker, and the answer is the stream as all see it.
    pub async fn command(&self, cmd: Command) -> Result<Result<Reply, CommandError>, Unavailable> {
        match cmd {
            Command::MintSession { .. } => {
                return self.ask(0, |tx| Request::Command(cmd, tx)).await;
            }
            Command::Close { conn } => {
                let w = conn as usize % self.0.len();
                return self.ask(w, |tx| Request::Command(cmd, tx)).await;
            }
            Command::SetDelay { .. }
            | Command::AddStream(_)
            | Command::RemoveStream { .. }
            | Command::UpdateStream(_)
            | Command::SetLimits(_) => {}
        }
        let mut merged: Option<Reply> = None;
        for w in 0..self.0.len() {
            let cmd = cmd.clone();
            match (
                self.ask(w, |tx| Request::Command(cmd, tx)).await?,
                &mut merged,
            ) {
                (Err(e), _) => return Ok(Err(e)),
                (Ok(Reply::Stream(s)), Some(Reply::Stream(m))) => m.merge(&s),
                (Ok(r), _) => merged = Some(r),
            }
        }
        merged.ok_or(Unavailable).map(Ok)
    }
}

/// How a worker's driver is woken by the others: for its feed (another worker's publisher
/// wrote packets for its viewers) or its kernel reports.
pub struct Wake {
    pub own: Arc<Notify>,
    /// The other workers, by index.
    pub others: Vec<(u32, Arc<Notify>)>,
}

impl Wake {
    /// One per worker: each knows the others.
    pub fn all(workers: usize) -> Vec<Wake> {
        let n: Vec<Arc<Notify>> = (0..workers).map(|_| Arc::default()).collect();
        (0..workers)
            .map(|i| Wake {
                own: n[i].clone(),
                others: (0..workers)
                    .filter(|&o| o != i)
                    .map(|o| (o as u32, n[o].clone()))
                    .collect(),
            })
            .collect()
    }
}

/// The driver's end of a [`RelayHandle`].
pub struct Requests(mpsc::Receiver<Request>);

pub async fn run(
    mut relay: Relay,
    socket: &UdpSocket,
    mut datapath: Box<dyn Datapath>,
    mut requests: Requests,
    wake: Wake,
    mut pulls: PullKeys,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    // Slots larger than any datagram the relay takes: one cut to a slot is still oversized,
    // and refused as such.
    let mut batch = RecvBatch::new(RECV_BATCH);
    let mut next_poll = datapath
        .poll_interval(Instant::now())
        .map(|d| tokio::time::Instant::now() + d);
    loop {
        let deadline = tokio::time::Instant::from_std(relay.poll_timeout());
        tokio::select! {
            biased;
            _ = &mut shutdown => {
                info!(connections = relay.connection_count(), "shutting down: sending SHUTDOWN to every peer");
                relay.shutdown(Instant::now());
                pump(&mut relay, datapath.as_mut());
                return Ok(());
            }
            Some(req) = requests.0.recv() => answer(&mut relay, datapath.as_ref(), req),
            (req, key) = pulls.answered() => relay.handle_pull(Instant::now(), req, key),
            r = socket.readable() => {
                r?;
                receive(&mut relay, datapath.as_mut(), socket, &mut batch);
            }
            _ = tokio::time::sleep_until(deadline) => relay.handle_timeout(Instant::now()),
            _ = sleep_until_some(next_poll), if next_poll.is_some() => {}
            _ = wake.own.notified() => {}
        }
        // The other workers' publishers' packets for this worker's viewers, whatever woke
        // it (one atomic read per other worker when there are none).
        take_feed(&mut relay, datapath.as_mut());
        // Due timers run here too, not only from their select! branch: with the socket
        // always readable (a busy relay) the biased select would never get to them.
        if Instant::now() >= relay.poll_timeout() {
            relay.handle_timeout(Instant::now());
        }
        if next_poll.is_some_and(|t| tokio::time::Instant::now() >= t) {
            // The datapath may hand a viewer to the kernel in its poll: read what is queued
            // first, so every packet that passed the kernel before the switch reaches the
            // relay (and that viewer) while the relay still serves it.
            for _ in 0..DRAIN_MAX / RECV_BATCH {
                let n = receive(&mut relay, datapath.as_mut(), socket, &mut batch);
                pump(&mut relay, datapath.as_mut());
                if n < RECV_BATCH {
                    break;
                }
            }
            let now = Instant::now();
            datapath.poll(now);
            next_poll = datapath
                .poll_interval(now)
                .map(|d| tokio::time::Instant::now() + d);
        }
        pump(&mut relay, datapath.as_mut());
        while let Some(req) = relay.poll_pull() {
            pulls.request(req);
        }
        if relay.take_fed() {
            // The others take it at their own pace unless they serve its viewers from
            // userspace (see `Shared::wants_prompt_feed`).
            for (w, n) in &wake.others {
                if relay.wants_prompt_feed(*w) {
                    n.notify_one();
                }
            }
        }
    }
}

/// Moves everything pending one way: route events to the datapath, its reports to the
/// relay, then the relay's datagrams out. Reports can make datagrams (a kernel-read ACK
/// that shows a loss) and events (none today), so they go before the datagrams.
fn pump(relay: &mut Relay, datapath: &mut dyn Datapath) {
    let now = Instant::now();
    while let Some(ev) = relay.poll_event() {
        datapath.on_route(now, &ev);
    }
    while let Some(report) = datapath.poll_report() {
        relay.handle_kernel(report);
    }
    if let Some(batch) = relay.poll_transmit() {
        datapath.send(&batch);
    }
}

/// Takes the other workers' feeds, the kernel's reports first: a viewer the kernel took
/// since (`KernelReport::Serving`) must be known as such before the feed brings the
/// packets the kernel already cloned to it, or they would go out twice.
fn take_feed(relay: &mut Relay, datapath: &mut dyn Datapath) {
    while let Some(report) = datapath.poll_report() {
        relay.handle_kernel(report);
    }
    relay.handle_feed(Instant::now());
}

fn answer(relay: &mut Relay, datapath: &dyn Datapath, req: Request) {
    // A requester that gave up is no concern of the relay's: its answer is dropped.
    match req {
        Request::Stats(tx) => drop(tx.send((relay.stats(), datapath.stats()))),
        Request::Command(cmd, tx) => drop(tx.send(relay.handle_command(Instant::now(), cmd))),
    }
}

async fn sleep_until_some(t: Option<tokio::time::Instant>) {
    if let Some(t) = t {
        tokio::time::sleep_until(t).await;
    }
}

/// Feeds one `recvmmsg` worth of queued datagrams (up to `RECV_BATCH`) to the relay;
/// returns how many were read (fewer: the socket ran dry).
fn receive(
    relay: &mut Relay,
    datapath: &mut dyn Datapath,
    socket: &UdpSocket,
    batch: &mut RecvBatch,
) -> usize {
    let fd = socket.as_raw_fd();
    // Before the read: whatever was queued by now is read by it if it comes back short.
    let asked = Instant::now();
    // Through tokio, so that running dry clears the socket's readiness.
    match socket.try_io(tokio::io::Interest::READABLE, || batch.try_recv(fd)) {
        Ok(n) => {
            let now = Instant::now();
            // Ran dry: viewers waiting for it go to the kernel now, before this batch is
            // handled, so that a packet which reaches the socket after this read and
            // before the kernel clones it (neither path would send it) is as unlikely as
            // can be. The batch read before still goes out from userspace (its packets
            // carry the previous `drained`, see `Relay::handle_kernel`).
            if n < RECV_BATCH {
                datapath.drained(asked);
            } else {
                datapath.busy(asked);
            }
            // What other workers fed this one first: a viewer's loss report may ask for
            // what is waiting there.
            take_feed(relay, datapath);
            for d in batch.received() {
                relay.handle_datagram(now, d.src, d.data);
            }
            if n < RECV_BATCH {
                relay.note_drained(asked);
            }
            n
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            datapath.drained(asked);
            relay.note_drained(asked);
            0
        }
        // ICMP errors from a vanished peer surface here; they concern one peer only.
        Err(e) => {
            warn!("recv: {e}");
            0
        }
    }
}
