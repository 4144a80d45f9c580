//! When bytes reach a viewer: one byte stream published to several URLs at once
//! (`TeePublisher`), and when a viewer's output file reached each offset (`Growth`), so
//! a delay is measured as viewers experience it.

use super::*;
use std::io::Read;

/// How long the publishers stay connected after the last byte.
const LINGER: Duration = Duration::from_millis(1500);

/// One `pv` at the clip's rate, its bytes copied to one srt-live-transmit publisher per
/// URL by a thread: every stream gets the same bytes at the same moment.
pub struct TeePublisher {
    pv: Proc,
    slts: Vec<Proc>,
    copier: Option<std::thread::JoinHandle<()>>,
    started: Instant,
}

impl TeePublisher {
    pub fn start(dir: &TempDir, urls: &[String], clip: &Clip, ns: &str) -> TeePublisher {
        let mut inputs = Vec::new();
        let mut slts = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            let (reader, writer) = std::io::pipe().expect("pipe");
            let err = dir.file(&format!("pub{i}.stderr"));
            let mut c = command(Some(ns), "srt-live-transmit");
            c.args(["-q", "-a:no", "file://con", url])
                .stdin(Stdio::from(reader))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&err).unwrap());
            slts.push(Proc::spawn(&format!("pub{i}"), c, libc::SIGINT, Some(err)));
            inputs.push(writer);
        }
        // srt-live-transmit discards input read before it is connected.
        std::thread::sleep(PUBLISHER_CONNECT_WAIT);
        let (reader, writer) = std::io::pipe().expect("pipe");
        let pv = pv_paced("pv", clip, writer);
        let copier = std::thread::spawn(move || {
            let mut reader = reader;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        for w in inputs.iter_mut() {
                            if w.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        eprintln!("[client] tee publisher -> {urls:?}");
        TeePublisher {
            pv,
            slts,
            copier: Some(copier),
            started: Instant::now(),
        }
    }

    pub fn finish(&mut self, clip: &Clip) {
        let left = clip.secs - self.started.elapsed().as_secs_f64();
        assert!(
            self.pv.wait_exit(secs(left.max(0.0) + 10.0)).is_some(),
            "pv still feeding"
        );
        if let Some(c) = self.copier.take() {
            let _ = c.join();
        }
        std::thread::sleep(LINGER);
        for s in self.slts.iter_mut() {
            assert!(s.running(), "{} exited early: {}", s.name, s.stderr_text());
            s.stop();
        }
    }
}

impl Drop for TeePublisher {
    fn drop(&mut self) {
        self.pv.stop();
        for s in self.slts.iter_mut() {
            s.stop();
        }
    }
}

/// When a file reached each size: sampled every 2 ms by a thread until `stop`.
pub struct Growth {
    samples: std::sync::Arc<std::sync::Mutex<Vec<(Instant, u64)>>>,
}

impl Growth {
    pub fn watch(
        path: std::path::PathBuf,
        until: Instant,
    ) -> (Growth, std::thread::JoinHandle<()>) {
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = samples.clone();
        let h = std::thread::spawn(move || {
            let mut last = 0;
            while Instant::now() < until {
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                if len != last {
                    s.lock().unwrap().push((Instant::now(), len));
                    last = len;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        (Growth { samples }, h)
    }

    /// When the file first held at least `offset` bytes.
    pub fn reached(&self, offset: u64) -> Option<Instant> {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .find(|(_, len)| *len >= offset)
            .map(|(t, _)| *t)
    }
}

/// Median of how much later `b` reached each byte offset in `range` (fractions of the
/// clip) than `a`, ms.
pub fn lag_ms(a: &Growth, b: &Growth, clip: &Clip, range: (f64, f64)) -> f64 {
    let total = clip.bytes.len() as f64;
    let mut lags: Vec<f64> = (0..20)
        .filter_map(|i| {
            let f = range.0 + (range.1 - range.0) * f64::from(i) / 19.0;
            let off = (total * f) as u64;
            Some(
                b.reached(off)?
                    .duration_since(a.reached(off)?)
                    .as_secs_f64()
                    * 1e3,
            )
        })
        .collect();
    assert!(lags.len() >= 15, "too few offsets reached: {lags:?}");
    lags.sort_by(f64::total_cmp);
    lags[lags.len() / 2]
}
