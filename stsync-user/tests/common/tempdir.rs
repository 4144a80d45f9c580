//! Temp dirs (under cargo's per-target tmp dir) and the tool paths tests run.

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

/// A directory removed on drop (by `tempfile`); kept, and its path printed, when the test
/// panicked, so its logs and captures can be read.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let root = tmp_root();
        fs::create_dir_all(&root).expect("create temp root");
        let dir = tempfile::Builder::new()
            .prefix(&format!("{tag}-"))
            .tempdir_in(root)
            .expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.disable_cleanup(true);
            eprintln!("[harness] test failed; kept {}", self.path().display());
        }
    }
}
