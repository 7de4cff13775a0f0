//! Shared by the namespace end-to-end tests: where the workspace is, and the
//! daemon binary of the test's own profile, built when stale.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `target/<profile>/<bin>` of `package` for this test executable's own profile
/// (`target/<profile>/deps/<test>-…`), built first if missing or older than this test
/// (which is rebuilt whenever the daemon's library changes).
pub fn binary(package: &str, bin: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let path = profile_dir.join(bin);
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if matches!((mtime(&path), mtime(&exe)), (Some(d), Some(t)) if d >= t) {
        return path;
    }
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .expect("profile directory name");
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace())
        .args(["build", "-p", package, "--target-dir"])
        .arg(profile_dir.parent().expect("target directory"));
    match profile {
        "debug" => {}
        "release" => {
            c.arg("--release");
        }
        p => {
            c.args(["--profile", p]);
        }
    }
    let status = c.status().expect("running cargo build");
    assert!(status.success(), "{c:?} failed: {status}");
    assert!(path.exists(), "{c:?} did not produce {}", path.display());
    path
}

/// The `lb-daemon` binary (see [`binary`]); checked once per process.
pub fn daemon() -> PathBuf {
    static DAEMON: OnceLock<PathBuf> = OnceLock::new();
    DAEMON
        .get_or_init(|| binary("lb-daemon", "lb-daemon"))
        .clone()
}

/// The `lbctl` binary of the test's own profile. lb-ctl is no dependency of the
/// tests, so the test executable's age says nothing about it (see [`binary`]): cargo
/// is asked once per process (a no-op when it is fresh).
pub fn lbctl() -> PathBuf {
    static LBCTL: OnceLock<PathBuf> = OnceLock::new();
    LBCTL
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test executable path");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("target/<profile>/deps/<test>");
            let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            c.current_dir(workspace())
                .args(["build", "-p", "lb-ctl", "--bin", "lbctl", "--target-dir"])
                .arg(profile_dir.parent().expect("target directory"));
            match profile_dir.file_name().and_then(|p| p.to_str()) {
                Some("debug") => {}
                Some("release") => {
                    c.arg("--release");
                }
                Some(p) => {
                    c.args(["--profile", p]);
                }
                None => panic!("no profile directory in {}", exe.display()),
            }
            let status = c.status().expect("running cargo build");
            assert!(status.success(), "{c:?} failed: {status}");
            let path = profile_dir.join("lbctl");
            assert!(path.exists(), "{c:?} did not produce {}", path.display());
            path
        })
        .clone()
}
