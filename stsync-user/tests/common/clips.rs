//! Clips.

use super::*;

pub struct Clip {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    /// Publishing time at the clip's own rate (file size / rate), seconds.
    pub secs: f64,
    /// Bytes per second to pace a byte-exact publisher with.
    pub rate: u64,
    frames: OnceLock<Vec<u32>>,
}

impl Clip {
    pub fn n_packets(&self) -> usize {
        self.bytes.len() / TS
    }
    pub fn packets(&self) -> Vec<&[u8]> {
        self.bytes.chunks_exact(TS).collect()
    }
    pub fn packets_per_sec(&self) -> f64 {
        self.n_packets() as f64 / self.secs
    }
    /// Packets a viewer that joined `joined_after` seconds into publishing should get.
    pub fn packets_after(&self, joined_after: f64) -> usize {
        let frac = (1.0 - joined_after / self.secs).clamp(0.0, 1.0);
        (self.n_packets() as f64 * frac) as usize
    }
    /// Index of the first packet at `secs` into the clip.
    pub fn packet_at(&self, secs: f64) -> usize {
        ((secs / self.secs).clamp(0.0, 1.0) * self.n_packets() as f64) as usize
    }
    /// The clip from `from_secs` on (packet aligned), written into `dir`; same rate.
    /// Compare what viewers get against the full clip, not against the suffix.
    pub fn suffix(&self, dir: &TempDir, from_secs: f64) -> Clip {
        let pkt = self.packet_at(from_secs);
        let bytes = self.bytes[pkt * TS..].to_vec();
        let path = dir.file(&format!("clip-from-{pkt}.ts"));
        fs::write(&path, &bytes).unwrap();
        Clip {
            path,
            secs: bytes.len() as f64 / self.rate as f64,
            bytes,
            rate: self.rate,
            frames: OnceLock::new(),
        }
    }
    /// The clip followed by about `secs` of MPEG-TS null packets (PID 0x1FFF, which
    /// `assert_contiguous` ignores), written into `dir`. Under loss a receiver only learns
    /// that a packet is missing when a later one arrives, so without a tail the clip's last
    /// packets could be lost for good with any SRT sender.
    pub fn padded(&self, dir: &TempDir, secs: f64) -> Clip {
        let quanta = ((secs * self.rate as f64) / CLIP_QUANTUM as f64)
            .ceil()
            .max(1.0) as usize;
        let mut null = [0xffu8; TS];
        null[..4].copy_from_slice(&[0x47, 0x1f, 0xff, 0x10]);
        let mut bytes = self.bytes.clone();
        for i in 0..quanta * CLIP_QUANTUM / TS {
            null[3] = 0x10 | (i as u8 & 0x0f);
            bytes.extend_from_slice(&null);
        }
        let path = dir.file("clip-padded.ts");
        fs::write(&path, &bytes).unwrap();
        Clip {
            path,
            secs: bytes.len() as f64 / self.rate as f64,
            bytes,
            rate: self.rate,
            frames: OnceLock::new(),
        }
    }
    /// CRC of every decoded video frame of the clip (ffmpeg framecrc).
    pub fn reference_frames(&self) -> &[u32] {
        self.frames.get_or_init(|| {
            let f = decode_frames_of_file(&self.path);
            assert!(
                !f.is_empty(),
                "decoding {} gave no frames",
                self.path.display()
            );
            f
        })
    }
}

pub fn make_clip(name: &str, video_kbps: u32, secs: u32) -> Clip {
    let dir = tmp_root().join("clips");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.ts"));
    if !path.exists() {
        let tmp = dir.join(format!("{name}.{}.tmp.ts", std::process::id()));
        let b = format!("{video_kbps}k");
        let buf = format!("{}k", video_kbps / 4);
        let t = secs.to_string();
        run(
            "ffmpeg",
            &[
                "-hide_banner",
                "-nostdin",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=320x240:rate=25",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440",
                "-c:v",
                "mpeg2video",
                "-b:v",
                &b,
                "-minrate",
                &b,
                "-maxrate",
                &b,
                "-bufsize",
                &buf,
                "-g",
                "25",
                "-c:a",
                "mp2",
                "-t",
                &t,
                "-f",
                "mpegts",
                tmp.to_str().unwrap(),
            ],
        )
        .expect("ffmpeg clip generation");
        let full = fs::read(&tmp).unwrap();
        assert!(full.len() > CLIP_QUANTUM * 4 && full[0] == 0x47);
        // Cut to a multiple of lcm(188, 1456): srt-live-transmit then publishes every byte.
        let cut = full.len() / CLIP_QUANTUM * CLIP_QUANTUM;
        fs::write(&tmp, &full[..cut]).unwrap();
        fs::rename(&tmp, &path).unwrap();
    }
    let bytes = fs::read(&path).unwrap();
    assert_eq!(bytes.len() % CLIP_QUANTUM, 0);
    // The encoder's rate: the uncut file (about half a quantum longer) over `secs`.
    let rate = ((bytes.len() + CLIP_QUANTUM / 2) as f64 / secs as f64) as u64;
    let secs = bytes.len() as f64 / rate as f64;
    Clip {
        path,
        bytes,
        secs,
        rate,
        frames: OnceLock::new(),
    }
}

/// The 2 Mbps, ~12 s clip (generated once, cached under target/tmp).
pub fn clip() -> &'static Clip {
    static C: OnceLock<Clip> = OnceLock::new();
    C.get_or_init(|| make_clip("testsrc-2m-12s", 2000, 12))
}

/// The 4 Mbps, ~30 s clip for the CPU measurement.
pub fn clip_4m() -> &'static Clip {
    static C: OnceLock<Clip> = OnceLock::new();
    C.get_or_init(|| make_clip("testsrc-4m-30s", 4000, 30))
}
