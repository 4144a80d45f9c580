//! The generator's side of the kernel sink (stsync-bench-ebpf): loads the program, sizes and
//! configures its maps, attaches it where the viewers receive, and reads the per-viewer
//! heads and slot rings through `mmap` (no syscall per packet).
//!
//! Attachments are links owned by the loaded object: they go away when the `Sink` is
//! dropped or the process exits, however it exits (and with the namespace).

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Array, Map, MapData, PerCpuArray};
use aya::programs::{
    tc::TcAttachOptions, LinkOrder, SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp,
    XdpMode,
};
use aya::{Ebpf, EbpfLoader};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU32, Ordering};
use stsync_bench_common::{
    self as common, counter, Head, SinkConfig, Slot, FLAG_BAD_PAYLOAD, FLAG_KK_MASK, FLAG_KK_SHIFT,
    FLAG_LEN_MASK, FLAG_REXMIT, FLAG_RX_REALTIME, PAYLOAD_PEEK, SLOT_VALID,
};
use stsync_common::srt::SEQ_MASK;

/// Where the sink runs.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attach {
    /// Native XDP in the veth driver.
    Xdp,
    /// Generic (skb) XDP.
    XdpGeneric,
    /// TC ingress (tcx).
    Tc,
}

/// Where `stsync-loadgen` looks for the object when --sink-object is not given: next to the
/// build output it came from (`target/release/..`), then the working directory's `target/`.
pub fn default_object_path() -> PathBuf {
    stsync_user::datapath::kernel::find_object("stsync-bench-ebpf", None)
}

/// One shared read-only mapping of an mmapable array map.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(map: &MapData, elem: usize, entries: u32, what: &str) -> Result<Mapping> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        // An mmapable array's values are 8-byte aligned and start at offset 0.
        let len = (elem.next_multiple_of(8) * entries as usize).next_multiple_of(page);
        // SAFETY: mapping a BPF map fd we hold; the kernel checks the length.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!("mmap {what}: {}", std::io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// What one slot says about a received packet.
#[derive(Debug, Clone, Copy)]
pub struct Arrived {
    pub len: usize,
    pub rexmit: bool,
    /// The data packet's KK bits (0 clear, 1 even key, 2 odd key).
    pub kk: u32,
    /// The payload's first `PAYLOAD_PEEK` bytes as they came (None: it was shorter).
    pub peek: Option<[u8; PAYLOAD_PEEK]>,
    /// When it arrived (ns): CLOCK_MONOTONIC, or CLOCK_REALTIME if `rx_realtime`.
    pub rx_ns: u64,
    pub rx_realtime: bool,
}

impl Arrived {
    /// A clear payload's (packet index, send time); None if it was not the generator's.
    pub fn payload(&self) -> Option<(u64, u64)> {
        self.peek
            .as_ref()
            .and_then(|p| crate::caller::read_payload(p))
    }

    /// The first `PAYLOAD_PEEK` bytes of `payload`, if it is that long.
    pub fn peek_of(payload: &[u8]) -> Option<[u8; PAYLOAD_PEEK]> {
        payload.get(..PAYLOAD_PEEK)?.try_into().ok()
    }
}

/// What the generator reads from the sink's maps; a trait so the draining logic can be
/// tested without a kernel.
pub trait Rings {
    /// Slots per viewer (a power of two).
    fn ring(&self) -> u32;
    /// One past the highest sequence number recorded for `viewer`, once there is one.
    fn next(&self, viewer: u32) -> Option<u32>;
    /// The packet with sequence number `seq`, if it is in `viewer`'s ring.
    fn slot(&self, viewer: u32, seq: u32) -> Option<Arrived>;
}

/// Kernel-side totals of one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SinkReport {
    pub attach: Option<Attach>,
    pub interface: String,
    pub ring: u32,
    pub recorded: u64,
    pub duplicates: u64,
    pub control_passed: u64,
    pub unmatched_passed: u64,
    /// IPv6 packets with an extension header first, passed unread.
    #[serde(default)]
    pub v6_ext_headers_passed: u64,
}

fn array_map<'a>(bpf: &'a Ebpf, name: &str) -> Result<&'a MapData> {
    match bpf.map(name) {
        Some(Map::Array(d)) => Ok(d),
        _ => bail!("no array map {name} in the sink object"),
    }
}

fn program_name(a: Attach) -> &'static str {
    match a {
        Attach::Tc => common::PROGRAM_TC,
        Attach::Xdp | Attach::XdpGeneric => common::PROGRAM_XDP,
    }
}

pub struct SinkParams<'a> {
    pub object: &'a Path,
    pub attach: Attach,
    pub config: SinkConfig,
    /// Slots per viewer (a power of two).
    pub ring: u32,
}

pub struct Sink {
    heads: Mapping,
    slots: Mapping,
    viewers: u32,
    ring: u32,
    attach: Attach,
    iface: String,
    // Last: dropping it detaches the program after the mappings are gone.
    bpf: Ebpf,
}

impl Sink {
    /// Loads and verifies the sink for `p.config.viewers` viewers (not attached yet).
    pub fn load(p: &SinkParams) -> Result<Sink> {
        if !p.ring.is_power_of_two() || p.config.viewers == 0 {
            bail!("sink ring must be a power of two and viewers > 0");
        }
        let bytes = std::fs::read(p.object).with_context(|| {
            format!(
                "reading the sink object {} (build it with `cargo xtask build-ebpf`)",
                p.object.display()
            )
        })?;
        let viewers = p.config.viewers;
        let mut bpf = EbpfLoader::new()
            .map_max_entries(common::MAP_HEADS, viewers)
            .map_max_entries(
                common::MAP_SLOTS,
                viewers
                    .checked_mul(p.ring)
                    .ok_or_else(|| anyhow!("viewers × ring overflows"))?,
            )
            .load(&bytes)
            .context("loading the sink object")?;
        let mut config: Array<&mut MapData, SinkConfig> = Array::try_from(
            bpf.map_mut(common::MAP_CONFIG)
                .ok_or_else(|| anyhow!("no map {}", common::MAP_CONFIG))?,
        )?;
        config
            .set(0, p.config, 0)
            .context("writing the sink config")?;
        let heads = Mapping::new(
            array_map(&bpf, common::MAP_HEADS)?,
            size_of::<Head>(),
            viewers,
            "sink heads",
        )?;
        let slots = Mapping::new(
            array_map(&bpf, common::MAP_SLOTS)?,
            size_of::<Slot>(),
            viewers * p.ring,
            "sink slots",
        )?;
        let name = program_name(p.attach);
        let prog = bpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("no program {name} in the sink object"))?;
        match p.attach {
            Attach::Tc => <&mut SchedClassifier>::try_from(prog)?.load(),
            Attach::Xdp | Attach::XdpGeneric => <&mut Xdp>::try_from(prog)?.load(),
        }
        .with_context(|| format!("verifying the sink ({name})"))?;
        Ok(Sink {
            heads,
            slots,
            viewers,
            ring: p.ring,
            attach: p.attach,
            iface: String::new(),
            bpf,
        })
    }

    /// Attaches the sink to `iface` in network namespace `netns` (the interface is looked
    /// up, and the link created, there).
    pub fn attach(&mut self, netns: Option<&str>, iface: &str) -> Result<()> {
        let prog = self
            .bpf
            .program_mut(program_name(self.attach))
            .expect("checked at load");
        let attach = self.attach;
        stsync_user::os::in_netns(netns, || {
            let r = match attach {
                Attach::Tc => <&mut SchedClassifier>::try_from(prog)
                    .map_err(std::io::Error::other)?
                    .attach_with_options(
                        iface,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map(drop),
                Attach::Xdp | Attach::XdpGeneric => {
                    let mode = if attach == Attach::Xdp {
                        XdpMode::Driver
                    } else {
                        XdpMode::Skb
                    };
                    <&mut Xdp>::try_from(prog)
                        .map_err(std::io::Error::other)?
                        .attach(iface, mode)
                        .map(drop)
                }
            };
            r.map_err(std::io::Error::other)
        })
        .with_context(|| format!("attaching the sink ({attach:?}) to {iface}"))?;
        if !self.iface.is_empty() {
            self.iface.push_str(", ");
        }
        self.iface.push_str(iface);
        Ok(())
    }

    /// Runs the program once on an Ethernet frame (BPF_PROG_TEST_RUN); its return value.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<u32> {
        self.test_run_repeat(frame, 1).map(|(r, _)| r)
    }

    /// Runs the program `repeat` times on a frame; (return value, mean time per run).
    pub fn test_run_repeat(
        &mut self,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, std::time::Duration)> {
        let prog = self
            .bpf
            .program_mut(program_name(self.attach))
            .expect("checked at load");
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        };
        let r = match self.attach {
            Attach::Tc => <&mut SchedClassifier>::try_from(prog)?.test_run(opts),
            Attach::Xdp | Attach::XdpGeneric => <&mut Xdp>::try_from(prog)?.test_run(opts),
        }
        .context("BPF_PROG_TEST_RUN")?;
        Ok((r.return_value, r.duration))
    }

    fn head_ptr(&self, viewer: u32) -> *const Head {
        assert!(viewer < self.viewers);
        // SAFETY: in bounds of the heads mapping (viewers entries of 32 bytes).
        unsafe { (self.heads.ptr as *const Head).add(viewer as usize) }
    }

    /// A copy of `viewer`'s head (its counters).
    pub fn head(&self, viewer: u32) -> Head {
        // SAFETY: a live mapping; torn counters are harmless (read for reporting).
        unsafe { std::ptr::read_volatile(self.head_ptr(viewer)) }
    }

    pub fn report(&self) -> SinkReport {
        let mut r = SinkReport {
            attach: Some(self.attach),
            interface: self.iface.clone(),
            ring: self.ring,
            ..Default::default()
        };
        let Some(map) = self.bpf.map(common::MAP_COUNTERS) else {
            return r;
        };
        let Ok(c) = PerCpuArray::<&MapData, u64>::try_from(map) else {
            return r;
        };
        let get = |i: u32| c.get(&i, 0).map_or(0, |v| v.iter().sum::<u64>());
        r.recorded = get(counter::RECORDED);
        r.duplicates = get(counter::DUPLICATES);
        r.control_passed = get(counter::CONTROL);
        r.unmatched_passed = get(counter::UNMATCHED);
        r.v6_ext_headers_passed = get(counter::V6_EXT_HEADERS);
        r
    }
}

impl Rings for Sink {
    fn ring(&self) -> u32 {
        self.ring
    }

    fn next(&self, viewer: u32) -> Option<u32> {
        let h = self.head_ptr(viewer);
        // SAFETY: aligned u32 fields of a live shared mapping, written by the kernel.
        let (started, next) = unsafe {
            let started = &*(std::ptr::addr_of!((*h).started) as *const AtomicU32);
            let next = &*(std::ptr::addr_of!((*h).next) as *const AtomicU32);
            (
                started.load(Ordering::Acquire),
                next.load(Ordering::Acquire),
            )
        };
        (started != 0).then_some(next & SEQ_MASK)
    }

    fn slot(&self, viewer: u32, seq: u32) -> Option<Arrived> {
        assert!(viewer < self.viewers);
        let i = viewer as usize * self.ring as usize + (seq & (self.ring - 1)) as usize;
        let want = (seq & SEQ_MASK) | SLOT_VALID;
        // SAFETY: in bounds of the slots mapping; fields are read volatile because the
        // kernel writes them concurrently; `seq` is checked before and after (see Slot).
        unsafe {
            let s = (self.slots.ptr as *const Slot).add(i);
            let tag = &*(std::ptr::addr_of!((*s).seq) as *const AtomicU32);
            if tag.load(Ordering::Acquire) != want {
                return None;
            }
            let flags = std::ptr::read_volatile(std::ptr::addr_of!((*s).flags));
            let head = std::ptr::read_volatile(std::ptr::addr_of!((*s).head));
            let index = std::ptr::read_volatile(std::ptr::addr_of!((*s).index));
            let sent = std::ptr::read_volatile(std::ptr::addr_of!((*s).sent_ns));
            let rx_ns = std::ptr::read_volatile(std::ptr::addr_of!((*s).rx_ns));
            fence(Ordering::Acquire);
            if tag.load(Ordering::Relaxed) != want {
                return None; // overwritten meanwhile by a packet one ring later
            }
            Some(Arrived {
                len: (flags & FLAG_LEN_MASK) as usize,
                rexmit: flags & FLAG_REXMIT != 0,
                kk: (flags & FLAG_KK_MASK) >> FLAG_KK_SHIFT,
                peek: (flags & FLAG_BAD_PAYLOAD == 0).then(|| {
                    let mut p = [0u8; PAYLOAD_PEEK];
                    p[..4].copy_from_slice(&head);
                    p[4..12].copy_from_slice(&index.to_be_bytes());
                    p[12..20].copy_from_slice(&sent.to_be_bytes());
                    p
                }),
                rx_ns,
                rx_realtime: flags & FLAG_RX_REALTIME != 0,
            })
        }
    }
}
