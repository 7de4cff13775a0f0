//! Test helpers: code run on a thread of its own in a network namespace, with a
//! current-thread tokio runtime (sockets belong to the namespace they are opened in,
//! and setns/unshare move only the calling thread).

use std::{fs::File, future::Future, os::fd::AsRawFd as _, process::Command};

/// Where the thread runs.
pub enum Netns {
    /// A new namespace, gone with the thread (nothing to clean up), `lo` up, then
    /// these commands run in it: `ip …` unless they start with `iptables ` or
    /// `ip6tables `.
    Fresh(&'static [&'static str]),
    /// A named one (`ip netns add`).
    Named(String),
}

/// Runs `f` there and waits for it; a panic in it fails the caller.
pub fn run_in<F: Future<Output = ()> + 'static>(ns: Netns, f: impl FnOnce() -> F + Send + 'static) {
    std::thread::spawn(move || {
        match ns {
            Netns::Fresh(setup) => {
                // SAFETY: unshare(2) moves only this thread into a new namespace.
                assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
                for cmd in std::iter::once(&"link set lo up").chain(setup) {
                    let (prog, args) = ["iptables", "ip6tables"]
                        .into_iter()
                        .find_map(|p| {
                            cmd.strip_prefix(p)
                                .and_then(|r| r.strip_prefix(' '))
                                .map(|r| (p, r))
                        })
                        .unwrap_or(("ip", cmd));
                    // The child inherits this thread's namespace.
                    let st = Command::new(prog)
                        .args(args.split_whitespace())
                        .status()
                        .unwrap_or_else(|e| panic!("{prog}: {e}"));
                    assert!(st.success(), "{prog} {args}: {st}");
                }
            }
            Netns::Named(name) => {
                let fd = File::open(format!("/run/netns/{name}")).expect("opening the namespace");
                // SAFETY: setns(2) on an open namespace file; only this thread moves.
                assert_eq!(
                    unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) },
                    0,
                    "setns"
                );
            }
        }
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(f());
    })
    .join()
    .expect("the namespace thread");
}
