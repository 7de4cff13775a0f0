//! Shared by the namespace end-to-end tests: where the workspace is, the daemon
//! binary of the test's own profile (built when stale), and a client of its API.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// This test executable's profile directory (it is `target/<profile>/deps/<test>-…`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// `cargo build` of `bin` of `package` into `profile_dir`'s profile; its path.
fn build(package: &str, bin: &str, profile_dir: &Path) -> PathBuf {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace())
        .args(["build", "-p", package, "--bin", bin, "--target-dir"])
        .arg(profile_dir.parent().expect("target directory"));
    match profile_dir.file_name().and_then(|p| p.to_str()) {
        Some("debug") => {}
        Some("release") => {
            c.arg("--release");
        }
        Some(p) => {
            c.args(["--profile", p]);
        }
        None => panic!("no profile directory name in {}", profile_dir.display()),
    }
    let status = c.status().expect("running cargo build");
    assert!(status.success(), "{c:?} failed: {status}");
    let path = profile_dir.join(bin);
    assert!(path.exists(), "{c:?} did not produce {}", path.display());
    path
}

/// The newest modification time of the sources a binary of ours is built from: the
/// crates it can depend on, and Cargo.lock.
fn newest_source() -> Option<std::time::SystemTime> {
    fn walk(p: &Path, newest: &mut Option<std::time::SystemTime>) {
        let Ok(meta) = std::fs::metadata(p) else {
            return;
        };
        if meta.is_dir() {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                walk(&e.path(), newest);
            }
        } else if let Ok(t) = meta.modified() {
            *newest = (*newest).max(Some(t));
        }
    }
    let root = workspace();
    let mut newest = None;
    walk(&root.join("Cargo.lock"), &mut newest);
    for krate in ["lb-common", "lb-ebpf", "lb-daemon", "lb-ctl"] {
        for part in ["src", "Cargo.toml", "build.rs"] {
            walk(&root.join(krate).join(part), &mut newest);
        }
    }
    newest
}

/// `target/<profile>/<bin>` of `package` for this test executable's own profile,
/// built first if missing or older than its sources. (Not "older than this test":
/// `cargo test` links the test after the binaries, and a `cargo build -p` made for
/// nothing selects other dependency features than the workspace's `cargo test` and
/// rebuilds part of the dependency tree.)
pub fn binary(package: &str, bin: &str) -> PathBuf {
    let profile_dir = profile_dir();
    let path = profile_dir.join(bin);
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    if built.is_some() && built >= newest_source() {
        return path;
    }
    build(package, bin, &profile_dir)
}

/// The `lb-daemon` binary (see [`binary`]); checked once per process.
pub fn daemon() -> PathBuf {
    static DAEMON: OnceLock<PathBuf> = OnceLock::new();
    DAEMON
        .get_or_init(|| binary("lb-daemon", "lb-daemon"))
        .clone()
}

/// The daemon's API over its unix socket.
pub struct Api {
    pub sock: PathBuf,
}

impl Api {
    pub fn get(&self, path: &str) -> Value {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", "--unix-socket"])
            .arg(&self.sock)
            .arg(format!("http://lb{path}"))
            .output()
            .expect("running curl");
        assert!(out.status.success(), "GET {path}: {}", out.status);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("GET {path}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Backend `addr` of the service on `port`, from GET /v1/health.
    pub fn backend(&self, port: u16, addr: &str) -> Value {
        let h = self.get("/v1/health");
        let svc = service(&h, port);
        svc["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["address"] == addr)
            .unwrap_or_else(|| panic!("no backend {addr} in {svc:#}"))
            .clone()
    }

    pub fn state(&self, port: u16, addr: &str) -> String {
        self.backend(port, addr)["state"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// New connections scheduled to `addr` by the service on `port` (GET /v1/stats).
    pub fn conns(&self, port: u16, addr: &str) -> u64 {
        let s = self.get("/v1/stats");
        let svc = s["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"]["port"] == port)
            .unwrap();
        svc["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["address"] == addr)
            .unwrap()["conns"]
            .as_u64()
            .unwrap()
    }
}

/// Service `port` of a GET /v1/health or /v1/stats answer.
pub fn service(health: &Value, port: u16) -> Value {
    health["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"]["port"] == port)
        .unwrap_or_else(|| panic!("no service port {port} in {health:#}"))
        .clone()
}

/// Polls every 50 ms until `ok`; returns the time it took, or panics after `limit`.
pub fn wait_for(what: &str, limit: f64, mut ok: impl FnMut() -> bool) -> f64 {
    let start = Instant::now();
    loop {
        if ok() {
            return start.elapsed().as_secs_f64();
        }
        assert!(
            start.elapsed().as_secs_f64() < limit,
            "{what}: not within {limit:.1} s"
        );
        sleep(Duration::from_millis(50));
    }
}

/// The `lbctl` binary (see [`binary`]); checked once per process.
pub fn lbctl() -> PathBuf {
    static LBCTL: OnceLock<PathBuf> = OnceLock::new();
    LBCTL.get_or_init(|| binary("lb-ctl", "lbctl")).clone()
}
