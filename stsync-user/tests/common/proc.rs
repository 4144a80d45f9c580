//! Process guard.

use super::*;

/// A child process in its own process group, killed (whole group, SIGKILL) on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    status: Option<ExitStatus>,
    stop_signal: i32,
    pub stderr_path: Option<PathBuf>,
}

impl Proc {
    /// Spawns `cmd` in a new process group with PDEATHSIG=SIGKILL. `stop_signal` is what
    /// `stop()` sends first (SIGINT lets srt-live-transmit and ffmpeg close cleanly).
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        stop_signal: i32,
        stderr_path: Option<PathBuf>,
    ) -> Proc {
        cmd.process_group(0);
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            status: None,
            stop_signal,
            stderr_path,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn running(&mut self) -> bool {
        self.status().is_none()
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(timeout, || self.status().is_some());
        self.status()
    }

    /// Sends `sig` to the process itself (not its group), if it has not been reaped.
    pub fn signal(&mut self, sig: i32) {
        if self.running() {
            unsafe { libc::kill(self.pid(), sig) };
        }
    }

    /// Sends `sig` to every process of the group (a shell pipeline's members too).
    pub fn signal_group(&mut self, sig: i32) {
        unsafe { libc::kill(-self.pid(), sig) };
    }

    fn kill_group(&mut self) {
        if self.running() {
            unsafe {
                libc::kill(-self.pid(), libc::SIGKILL);
                libc::kill(self.pid(), libc::SIGKILL);
            }
            self.status = self.child.wait().ok();
        }
    }

    /// Stop signal, up to `grace` to exit, then SIGKILL to the group.
    pub fn stop_within(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.running() {
            let sig = self.stop_signal;
            self.signal(sig);
            if self.wait_exit(grace).is_none() {
                eprintln!(
                    "[harness] {} ignored signal {sig} for {grace:?}; killing",
                    self.name
                );
                self.kill_group();
            }
        }
        self.status()
    }

    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.stop_within(Duration::from_secs(4))
    }

    pub fn stderr_text(&self) -> String {
        self.stderr_path
            .as_deref()
            .map(read_lossy)
            .unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// `prog`, or `ip netns exec NS prog` (which execs, so the pid is the program's).
pub fn command(ns: Option<&str>, prog: &str) -> Command {
    let prog = tool(prog);
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(prog);
            c
        }
        None => Command::new(prog),
    }
}

pub(crate) fn out_file(p: &Path) -> File {
    File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()))
}
