//! Running code inside a network namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Runs `f` inside network namespace `name` (`/var/run/netns/<name>`, as `ip netns add`
/// makes it), or right here when `name` is `None`. What `f` creates there stays there
/// (sockets, links).
///
/// `f` runs on a short-lived thread of its own, which alone enters the namespace: the
/// caller's thread never changes namespace, so no failure can leave it in the wrong one.
/// A panic in `f` is resumed in the caller.
pub fn in_netns<T, E>(name: Option<&str>, f: impl FnOnce() -> Result<T, E> + Send) -> Result<T, E>
where
    T: Send,
    E: From<io::Error> + Send,
{
    let Some(name) = name else { return f() };
    let path = format!("/var/run/netns/{name}");
    let ns = File::open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("network namespace {path}: {e}")))?;
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new().spawn_scoped(s, move || {
            // SAFETY: setns on an open namespace file; it moves this new thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let e = io::Error::last_os_error();
                let e = io::Error::new(e.kind(), format!("entering {path}: {e}"));
                return Err(E::from(e));
            }
            f()
        })?;
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn own_netns() -> io::Result<std::path::PathBuf> {
        std::fs::read_link("/proc/thread-self/ns/net")
    }

    #[test]
    fn none_runs_here() {
        let here = own_netns().unwrap();
        let there = in_netns(None, own_netns).unwrap();
        assert_eq!(here, there);
    }

    #[test]
    fn a_missing_namespace_is_an_error_naming_it() {
        let e = in_netns(Some("stsync-no-such-netns"), || Ok::<_, io::Error>(())).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("stsync-no-such-netns"), "{e}");
    }

    /// Needs root and `ip`; passes without doing anything otherwise.
    #[test]
    fn runs_inside_and_leaves_the_caller_where_it_was() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let name = format!("stsync-os-test-{}", std::process::id());
        let ip = |args: &[&str]| Command::new("ip").args(args).status();
        if !ip(&["netns", "add", &name]).is_ok_and(|s| s.success()) {
            eprintln!("skipped: ip netns add failed");
            return;
        }
        let here = own_netns().unwrap();
        let inside = in_netns(Some(&name), own_netns);
        let panicked = std::panic::catch_unwind(|| {
            in_netns(Some(&name), || -> io::Result<()> { panic!("boom") })
        });
        let _ = ip(&["netns", "del", &name]);
        assert_ne!(inside.unwrap(), here);
        assert_eq!(own_netns().unwrap(), here);
        assert!(panicked.is_err());
    }
}
