//! Temp dirs (under cargo's per-target tmp dir).

use super::*;

pub fn tmp_root() -> PathBuf {
    // No "stsync" or client names in these paths: see `tool`.
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("stt")
}

/// The path to run `prog` by. Clients and the relay run through symlinks with names of
/// their own (`sttslt`, `sttffm`, `sttpv`, `sttrelay`): a developer's
/// `pkill srt-live-transmit` / `pkill -f stsync` on the same machine then does not kill
/// a running test's processes (seen while the daemon was being written next to these
/// tests). The programs are the same binaries.
pub fn tool(prog: &str) -> PathBuf {
    let (alias, target) = match prog {
        "srt-live-transmit" => ("sttslt", which(prog)),
        "ffmpeg" => ("sttffm", which(prog)),
        "pv" => ("sttpv", which(prog)),
        "relay" => ("sttrelay", PathBuf::from(RELAY_BIN)),
        _ => return PathBuf::from(prog),
    };
    let dir = tmp_root().join("bin");
    let link = dir.join(alias);
    if fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
        fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(format!(".{alias}.{}", unique("l")));
        std::os::unix::fs::symlink(&target, &tmp).unwrap();
        fs::rename(&tmp, &link).unwrap();
    }
    link
}

pub(crate) fn which(prog: &str) -> PathBuf {
    for d in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(d).join(prog);
        if p.is_file() {
            return p;
        }
    }
    panic!("{prog} not found in PATH (apt-get install ffmpeg srt-tools pv)");
}

/// A directory removed on drop; kept (and its path printed) when the test panicked.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = tmp_root().join(unique(tag));
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("[harness] test failed; kept {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}
