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
