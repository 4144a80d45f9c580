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
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
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
/// The workers copy their counters for the API at most this often, however many requests
/// ask (`/v1/metrics`, `/v1/streams`, `/v1/connections`: anyone can send them back to back).
pub const SNAPSHOT_GAP: Duration = Duration::from_millis(100);

/// What the HTTP side asks the driver.
enum Request {
    Stats(oneshot::Sender<(Snapshot, DatapathStats)>),
    Command(Command, oneshot::Sender<Result<Reply, CommandError>>),
}

/// The HTTP side's way to the relay's workers: requests are answered between two batches
/// of datagrams.
#[derive(Clone)]
pub struct RelayHandle {
    workers: Vec<mpsc::Sender<Request>>,
    snapshots: Arc<tokio::sync::Mutex<Snapshots>>,
    /// Copies the workers were asked for since start.
    taken: Arc<AtomicU64>,
}

/// The last copy of the workers' counters (none: they did not answer), and when it was
/// asked for.
#[derive(Default)]
struct Snapshots {
    asked: Option<tokio::time::Instant>,
    last: Option<(Snapshot, DatapathStats)>,
}

/// The relay did not answer (stopped, or busier than `ANSWER_WITHIN`).
#[derive(Debug, thiserror::Error)]
#[error("the relay did not answer")]
pub struct Unavailable;

impl RelayHandle {
    /// A handle to `workers` drivers and the receiving end each takes.
    pub fn new(workers: usize) -> (RelayHandle, Vec<Requests>) {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..workers.max(1)).map(|_| mpsc::channel(64)).unzip();
        let handle = RelayHandle {
            workers: tx,
            snapshots: Arc::default(),
            taken: Arc::default(),
        };
        (handle, rx.into_iter().map(Requests).collect())
    }

    async fn ask<T>(
        &self,
        worker: usize,
        req: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, Unavailable> {
        let (tx, rx) = oneshot::channel();
        self.workers[worker]
            .send(req(tx))
            .await
            .map_err(|_| Unavailable)?;
        match tokio::time::timeout(ANSWER_WITHIN, rx).await {
            Ok(Ok(v)) => Ok(v),
            _ => Err(Unavailable),
        }
    }

    /// The relay's and the datapath's counters, every worker's merged, as of this call or
    /// later. The workers are asked at most once per `SNAPSHOT_GAP`: callers queue, and one
    /// that finds a copy asked for after it came takes that one, so a flood of requests
    /// costs the workers 10 copies a second and no caller gets counters older than its
    /// request.
    pub async fn stats(&self) -> Result<(Snapshot, DatapathStats), Unavailable> {
        let came = tokio::time::Instant::now();
        let mut s = self.snapshots.lock().await;
        if let Some(asked) = s.asked {
            // Asked for after this call came: as fresh as one of its own, failure included
            // (so callers queued behind a relay that does not answer fail together).
            if asked >= came {
                return s.last.clone().ok_or(Unavailable);
            }
            tokio::time::sleep_until(asked + SNAPSHOT_GAP).await;
        }
        s.asked = Some(tokio::time::Instant::now());
        self.taken.fetch_add(1, Relaxed);
        s.last = self.take_stats().await.ok();
        s.last.clone().ok_or(Unavailable)
    }

    /// Copies of the counters the workers were asked for since start (`stats`).
    pub fn snapshots_taken(&self) -> u64 {
        self.taken.load(Relaxed)
    }

    async fn take_stats(&self) -> Result<(Snapshot, DatapathStats), Unavailable> {
        let (mut snap, mut dp) = self.ask(0, Request::Stats).await?;
        for w in 1..self.workers.len() {
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
                let w = conn as usize % self.workers.len();
                return self.ask(w, |tx| Request::Command(cmd, tx)).await;
            }
            Command::SetDelay { .. }
            | Command::AddStream(_)
            | Command::RemoveStream { .. }
            | Command::UpdateStream(_)
            | Command::SetLimits(_) => {}
        }
        let mut merged: Option<Reply> = None;
        for w in 0..self.workers.len() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::SeqCst;

    /// 100 requests over about a second, many at once: the worker copies its counters at
    /// most once per `SNAPSHOT_GAP` (plus the first), and every caller gets a copy asked
    /// for after it came (never an older one).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshots_are_shared_and_never_older_than_the_request() {
        let (handle, mut requests) = RelayHandle::new(1);
        let mut rx = requests.remove(0).0;
        let received = Arc::new(AtomicU64::new(0));
        let seen = received.clone();
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                if let Request::Stats(tx) = req {
                    let n = seen.fetch_add(1, SeqCst) + 1;
                    let snap = Snapshot {
                        connections_total: n,
                        ..Default::default()
                    };
                    let _ = tx.send((snap, DatapathStats::default()));
                }
            }
        });
        let start = Instant::now();
        let mut calls = Vec::new();
        for i in 0..100 {
            let h = handle.clone();
            let r = received.clone();
            calls.push(tokio::spawn(async move {
                let before = r.load(SeqCst);
                let (snap, _) = h.stats().await.unwrap();
                (before, snap.connections_total)
            }));
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for c in calls {
            let (before, got) = c.await.unwrap();
            assert!(
                got > before,
                "a copy asked before the call: {got} <= {before}"
            );
        }
        let took = start.elapsed();
        let copies = received.load(SeqCst);
        let bound = 1 + (took.as_millis() / SNAPSHOT_GAP.as_millis()) as u64;
        assert!(
            copies <= bound && copies >= 2,
            "{copies} copies for 100 requests in {took:?}"
        );
        assert_eq!(handle.snapshots_taken(), copies);
    }
}
