//! The demo topology of lb-daemon/default.toml, built in network namespaces with
//! iproute2: one bridge, the load balancer, a client and three nginx real servers
//! whose interfaces run `xdp_decap`. Used by `cargo xtask demo` and, through
//! `#[path]`, by the end-to-end test (tests/tests/e2e_netns.rs).
//!
//! Every namespace is named `<prefix><role>` and all interfaces live inside them,
//! so nothing collides with the host or with another prefix. [`Lab`] removes
//! leftovers of its prefix before building and tears everything down when dropped.
//!
//! `xdp_pass` and `xdp_decap` are attached with aya from this process (entering
//! each namespace with setns on the calling thread), not with bpftool or iproute2:
//! their libbpf (1.x) rejects aya objects ("legacy map definitions in 'maps'
//! section are not supported"). The links live as long as the [`Lab`]: they are
//! detached when it is dropped, or by the kernel if the process dies. Nothing is
//! pinned in bpffs.

use std::{
    fs::{self, File},
    io::Read as _,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, XdpMode},
};

/// Stops the accept loops of [`Lab::serve_on_servers`] when dropped.
#[allow(dead_code)] // the namespace tests'
pub struct ServerThreads {
    stop: Arc<AtomicBool>,
}

impl Drop for ServerThreads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The shared L2 segment.
pub const PREFIX_LEN: u8 = 24;
pub const LB_ADDR: &str = "10.100.0.1";
pub const CLIENT_ADDR: &str = "10.100.0.2";
pub const VIP: &str = "10.100.0.100";
pub const VIP_PORT: u16 = 80;
/// The LB's interface (daemon.interfaces).
pub const LB_IF: &str = "lb0";
/// The client's and the real servers' interface.
const HOST_IF: &str = "eth0";

pub struct Server {
    pub name: &'static str,
    pub addr: &'static str,
    pub mac: &'static str,
    pub weight: u32,
}

/// The backends of default.toml's web VIP.
pub const SERVERS: [Server; 3] = [
    Server {
        name: "rs1",
        addr: "10.100.0.11",
        mac: "02:00:00:64:00:0b",
        weight: 1,
    },
    Server {
        name: "rs2",
        addr: "10.100.0.12",
        mac: "02:00:00:64:00:0c",
        weight: 1,
    },
    Server {
        name: "rs3",
        addr: "10.100.0.13",
        mac: "02:00:00:64:00:0d",
        weight: 2,
    },
];

/// Maps of the XDP object that only `xdp_lb` uses: shrunk so that loading the object
/// for `xdp_pass` / `xdp_decap` does not allocate the data plane's full-size tables.
pub const UNUSED_MAPS: [&str; 9] = [
    "VIPS",
    "MAGLEV",
    "BACKENDS",
    "CONNS",
    "PERSIST",
    "FRAGS",
    "RR_STATE",
    "VIP_STATS",
    "BACKEND_STATS",
];

/// Runs a command, returning its stdout; fails with its stderr.
pub fn cmd(c: &mut Command) -> Result<String> {
    let out = c.output().with_context(|| format!("spawning {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    cmd(Command::new("ip").args(args))
}

/// Namespaces whose name starts with `prefix`.
pub fn namespaces(prefix: &str) -> Result<Vec<String>> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

/// Removes the leftovers of earlier test runs whose process is gone: namespaces,
/// temporary files and pins (under /sys/fs/bpf) named `<tag><pid>…` (the tests'
/// prefixes, `<tag><pid>-` or `<tag><pid>-<n>-`) with no process `<pid>` any more.
#[allow(dead_code)] // the namespace tests' (they include this file); not the demo's
pub fn remove_stale(tag: &str) -> Result<()> {
    // "<tag><pid>" of a name made by a run whose process is gone.
    let gone = |name: &str| -> Option<String> {
        let pid = name.strip_prefix(tag)?.split('-').next()?;
        let numeric = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
        (numeric && !Path::new("/proc").join(pid).exists()).then(|| format!("{tag}{pid}"))
    };
    let mut runs = std::collections::BTreeSet::new();
    for ns in namespaces(tag)? {
        runs.extend(gone(&ns));
    }
    let mut paths = Vec::new();
    for dir in [Path::new(PIN_ROOT).to_path_buf(), std::env::temp_dir()] {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if let Some(run) = gone(&e.file_name().to_string_lossy()) {
                runs.insert(run);
                paths.push(e.path());
            }
        }
    }
    for run in runs {
        remove_leftovers(&format!("{run}-"))?;
    }
    for p in paths {
        let r = if p.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        match r {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", p.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Where the daemon pins (bpffs).
pub const PIN_ROOT: &str = "/sys/fs/bpf";

/// Once per process, for tests whose daemon pins: root, the host's bpffs on
/// /sys/fs/bpf, and the leftovers of earlier runs (see [`remove_stale`]) removed.
#[allow(dead_code)]
pub fn prepare_pinning_test(tag: &str) {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "the test needs root");
        let fs_type =
            cmd(Command::new("stat").args(["-f", "-c", "%T", PIN_ROOT])).unwrap_or_default();
        if fs_type.trim() != "bpf_fs" {
            fs::create_dir_all(PIN_ROOT).ok();
            cmd(Command::new("mount").args(["-t", "bpf", "bpf", PIN_ROOT]))
                .expect("mounting bpffs on /sys/fs/bpf");
        }
        remove_stale(tag).expect("removing leftovers of earlier runs");
    });
}

/// The daemon instance of a test prefix (`lbrst-<pid>-<n>-` → `lbrst-<pid>-<n>`).
#[allow(dead_code)]
pub fn instance(prefix: &str) -> &str {
    prefix.trim_end_matches('-')
}

/// Where the daemon of instance [`instance`]`(prefix)` pins.
#[allow(dead_code)]
pub fn pin_dir(prefix: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(instance(prefix))
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a pid we started (or that lives in one of our namespaces).
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Polls `ok` every 20 ms until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut ok: impl FnMut() -> Result<bool>) -> Result<bool> {
    let start = Instant::now();
    loop {
        if ok()? {
            return Ok(true);
        }
        if start.elapsed() > limit {
            return Ok(false);
        }
        sleep(Duration::from_millis(20));
    }
}

/// Asks a child to stop (SIGTERM), then kills it if it has not exited after `grace`.
fn stop(child: &mut Child, grace: Duration) -> Result<std::process::ExitStatus> {
    signal(child.id(), libc::SIGTERM);
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if start.elapsed() > grace {
            let _ = child.kill();
            return Ok(child.wait()?);
        }
        sleep(Duration::from_millis(20));
    }
}

/// Removes everything a previous run with this prefix may have left: processes still
/// inside its namespaces (nginx, a daemon), the namespaces (and with them the bridge
/// and the veths) and the temporary directory.
pub fn remove_leftovers(prefix: &str) -> Result<()> {
    for ns in namespaces(prefix)? {
        let pids = || -> Result<Vec<u32>> {
            Ok(ip(&["netns", "pids", &ns])?
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect())
        };
        for pid in pids()? {
            signal(pid, libc::SIGKILL);
        }
        wait_until(Duration::from_secs(2), || Ok(pids()?.is_empty()))?;
        ip(&["netns", "del", &ns])?;
    }
    let dir = files_dir(prefix);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

fn files_dir(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{prefix}files"))
}

fn setns(f: &File) -> std::io::Result<()> {
    // SAFETY: setns(2) on an open namespace file; only the calling thread moves.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Turns transmit checksum offload off on `ifname` in the calling thread's network
/// namespace (ETHTOOL_STXCSUM, what `ethtool -K <ifname> tx off` does).
fn tx_checksum_off(ifname: &str) -> Result<()> {
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if ifname.len() >= req.ifr_name.len() {
        bail!("interface name {ifname:?} is too long");
    }
    for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: a plain socket, owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket");
    }
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCETHTOOL with an ifreq whose data points at a live ethtool_value.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCETHTOOL as _, &raw mut req) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("turning off tx checksum offload on {ifname}"));
    }
    Ok(())
}

/// Runs `f` with the calling thread in network namespace `ns`, then moves it back.
pub fn in_netns<T>(ns: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let home = File::open("/proc/thread-self/ns/net").context("opening our network namespace")?;
    let target = File::open(Path::new("/run/netns").join(ns))
        .with_context(|| format!("opening namespace {ns}"))?;
    setns(&target).with_context(|| format!("entering namespace {ns}"))?;
    let r = f();
    setns(&home).expect("returning to the original network namespace");
    r
}

/// The topology, its processes and the XDP programs attached in it.
pub struct Lab {
    pub prefix: String,
    /// nginx configurations and logs, the daemon's log.
    pub dir: PathBuf,
    xdp: Option<Ebpf>,
    nginx: Vec<Child>,
    daemon: Option<Child>,
}

impl Lab {
    /// Builds the topology with the XDP object `object` (for `xdp_pass` and
    /// `xdp_decap`), after removing the leftovers of an earlier run with `prefix`.
    /// On error, what was built is removed.
    pub fn build(prefix: &str, object: &[u8]) -> Result<Lab> {
        remove_leftovers(prefix)?;
        let dir = files_dir(prefix);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut lab = Lab {
            prefix: prefix.to_owned(),
            dir,
            xdp: None,
            nginx: Vec::new(),
            daemon: None,
        };
        lab.setup(object)?;
        Ok(lab)
    }

    pub fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    fn setup(&mut self, object: &[u8]) -> Result<()> {
        let sw = self.ns("sw");
        let roles = ["sw", "lb", "client"]
            .into_iter()
            .chain(SERVERS.iter().map(|s| s.name));
        for role in roles {
            let ns = self.ns(role);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;

        let cidr = |a: &str| format!("{a}/{PREFIX_LEN}");
        let vip = format!("{VIP}/32");
        self.port("lb", LB_IF, None, &cidr(LB_ADDR))?;
        ip(&["-n", &self.ns("lb"), "addr", "add", &vip, "dev", "lo"])?;
        self.port("client", HOST_IF, None, &cidr(CLIENT_ADDR))?;
        // A veth hands its peer packets whose TCP/UDP checksum is left to "hardware"
        // (CHECKSUM_PARTIAL); XDP_TX forwards them as raw frames without the
        // checksum ever being filled in, and the real servers drop them
        // (TcpInCsumErrors). A NIC delivers complete checksums: make the client's veth
        // compute them in software, as `ethtool -K eth0 tx off` would.
        in_netns(&self.ns("client"), || tx_checksum_off(HOST_IF))?;
        for s in &SERVERS {
            let ns = self.ns(s.name);
            self.port(s.name, HOST_IF, Some(s.mac), &cidr(s.addr))?;
            ip(&["-n", &ns, "addr", "add", &vip, "dev", "lo"])?;
            // DR/TUN real servers: never answer ARP for the VIP (on lo), never use it
            // as an ARP source; accept the decapsulated packets whatever the route back.
            let rp_if = format!("net.ipv4.conf.{HOST_IF}.rp_filter=0");
            let sysctls = [
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                &rp_if,
            ];
            cmd(Command::new("ip")
                .args(["netns", "exec", &ns, "sysctl", "-qw"])
                .args(sysctls))?;
        }

        // XDP_TX'd frames reach the LB's veth peer only if it runs a native XDP program.
        let mut ebpf = EbpfLoader::new();
        for m in UNUSED_MAPS {
            ebpf.map_max_entries(m, 16);
        }
        let mut ebpf = ebpf.load(object).context("loading the XDP object")?;
        for name in ["xdp_pass", "xdp_decap"] {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("no program {name} in the XDP object"))?
                .try_into()?;
            p.load().with_context(|| format!("verifying {name}"))?;
        }
        let mut attach = |prog: &str, ns: &str, ifname: &str| -> Result<()> {
            let p: &mut Xdp = ebpf.program_mut(prog).expect("loaded above").try_into()?;
            let c = std::ffi::CString::new(ifname)?;
            in_netns(ns, || Ok(p.attach(c.as_c_str(), XdpMode::Driver)?))
                .with_context(|| format!("attaching {prog} (native) to {ifname} in {ns}"))?;
            Ok(())
        };
        attach("xdp_pass", &sw, "p-lb")?;
        for s in &SERVERS {
            attach("xdp_decap", &self.ns(s.name), HOST_IF)?;
        }
        self.xdp = Some(ebpf);

        for s in &SERVERS {
            let child = self.start_nginx(s)?;
            self.nginx.push(child);
        }
        // Ready when each answers the client directly (this also checks the bridge).
        let client = self.ns("client");
        for (s, child) in SERVERS.iter().zip(self.nginx.iter_mut()) {
            let addr: SocketAddr = format!("{}:{VIP_PORT}", s.addr).parse()?;
            let log = self.dir.join(s.name).join("error.log");
            let ok = wait_until(Duration::from_secs(10), || {
                if let Some(st) = child.try_wait()? {
                    bail!(
                        "nginx of {} exited ({st}): {}",
                        s.name,
                        fs::read_to_string(&log).unwrap_or_default().trim()
                    );
                }
                in_netns(&client, || {
                    Ok(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
                })
            })?;
            if !ok {
                bail!("nginx of {} does not answer on {addr}", s.name);
            }
        }
        Ok(())
    }

    /// A veth pair: `ifname` (with `mac`, `addr`) in `role`'s namespace, its peer
    /// `p-<role>` in the bridge.
    fn port(&self, role: &str, ifname: &str, mac: Option<&str>, addr: &str) -> Result<()> {
        let (sw, ns) = (self.ns("sw"), self.ns(role));
        let peer = format!("p-{role}");
        let mut args = vec![
            "-n", &sw, "link", "add", &peer, "type", "veth", "peer", "name", ifname, "netns", &ns,
        ];
        if let Some(m) = mac {
            args.extend(["address", m]);
        }
        ip(&args)?;
        ip(&["-n", &sw, "link", "set", &peer, "master", "br0", "up"])?;
        ip(&["-n", &ns, "addr", "add", addr, "dev", ifname])?;
        ip(&["-n", &ns, "link", "set", ifname, "up"])?;
        Ok(())
    }

    #[allow(dead_code)] // with stop_nginx / restart_nginx: the tests'
    fn server_index(name: &str) -> Result<usize> {
        SERVERS
            .iter()
            .position(|s| s.name == name)
            .with_context(|| format!("no real server {name}"))
    }

    /// Stops real server `name`'s nginx (SIGTERM, waited for).
    #[allow(dead_code)]
    pub fn stop_nginx(&mut self, name: &str) -> Result<()> {
        let i = Self::server_index(name)?;
        let child = self.nginx.get_mut(i).context("nginx not started")?;
        stop(child, Duration::from_secs(5))?;
        Ok(())
    }

    /// Starts real server `name`'s nginx again (after [`Lab::stop_nginx`]).
    #[allow(dead_code)]
    pub fn restart_nginx(&mut self, name: &str) -> Result<()> {
        let i = Self::server_index(name)?;
        let child = self.start_nginx(&SERVERS[i])?;
        let mut old = std::mem::replace(&mut self.nginx[i], child);
        stop(&mut old, Duration::from_secs(1))?;
        Ok(())
    }

    fn start_nginx(&mut self, s: &Server) -> Result<Child> {
        let d = self.dir.join(s.name);
        fs::create_dir_all(&d)?;
        let d_str = d.display();
        let conf = format!(
            r#"worker_processes 1;
pid {d_str}/nginx.pid;
error_log {d_str}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d_str}/client_body;
    proxy_temp_path {d_str}/proxy;
    fastcgi_temp_path {d_str}/fastcgi;
    uwsgi_temp_path {d_str}/uwsgi;
    scgi_temp_path {d_str}/scgi;
    server {{
        listen 0.0.0.0:{VIP_PORT} default_server;
        location / {{
            default_type text/plain;
            return 200 "{name}\n";
        }}
    }}
}}
"#,
            name = s.name
        );
        let conf_path = d.join("nginx.conf");
        fs::write(&conf_path, conf)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(s.name), "nginx", "-p"])
            .arg(&d)
            .arg("-e")
            .arg(d.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(d.join("stderr.log"))?)
            .spawn()
            .context("starting nginx")?;
        Ok(child)
    }

    /// Starts `daemon args…` in the LB's namespace and waits until an XDP program is
    /// attached to lb0. Returns the mode ip-link shows ("native" or "generic").
    /// Writes `config` to `lb.toml` in the lab's directory and starts `daemon` on it
    /// unpinned, its state file and API socket there too; the socket's path.
    #[allow(dead_code)] // the namespace tests'
    pub fn start_unpinned_daemon(&mut self, daemon: &Path, config: &str) -> Result<PathBuf> {
        let cfg = self.dir.join("lb.toml");
        fs::write(&cfg, config)?;
        let sock = self.dir.join("api.sock");
        let state = self.dir.join("state.json");
        let arg = |p: &Path| p.to_str().map(str::to_string).context("a UTF-8 path");
        let (cfg, state_s, sock_s) = (arg(&cfg)?, arg(&state)?, arg(&sock)?);
        self.start_daemon(
            daemon,
            &[
                "--config",
                &cfg,
                "--no-pin",
                "--state-file",
                &state_s,
                "--socket",
                &sock_s,
            ],
        )?;
        Ok(sock)
    }

    pub fn start_daemon(&mut self, daemon: &Path, args: &[&str]) -> Result<&'static str> {
        let lb = self.ns("lb");
        let log_path = self.dir.join("daemon.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &lb])
            .arg(daemon)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log_path)?)
            .spawn()
            .with_context(|| format!("starting {}", daemon.display()))?;
        let child = self.daemon.insert(child);
        let mut mode = "";
        let attached = wait_until(Duration::from_secs(30), || {
            if let Some(st) = child.try_wait()? {
                bail!(
                    "lb-daemon exited ({st}) before attaching:\n{}",
                    fs::read_to_string(&log_path).unwrap_or_default().trim()
                );
            }
            let link = ip(&["-n", &lb, "link", "show", LB_IF])?;
            mode = if link.contains("prog/xdpgeneric") {
                "generic"
            } else if link.contains("prog/xdp ") {
                "native"
            } else {
                ""
            };
            Ok(!mode.is_empty())
        })?;
        if !attached {
            bail!("lb-daemon did not attach an XDP program to {LB_IF} within 30 s");
        }
        Ok(mode)
    }

    /// SIGTERM to the daemon; returns what it printed on stdout (its counters).
    pub fn stop_daemon(&mut self) -> Result<String> {
        let mut child = self.daemon.take().context("the daemon is not running")?;
        let status = stop(&mut child, Duration::from_secs(10))?;
        let mut out = String::new();
        if let Some(mut o) = child.stdout.take() {
            o.read_to_string(&mut out)?;
        }
        if !status.success() {
            bail!(
                "lb-daemon exited with {status}:\n{}",
                fs::read_to_string(self.dir.join("daemon.log"))
                    .unwrap_or_default()
                    .trim()
            );
        }
        Ok(out)
    }

    /// A command run in the client's namespace.
    pub fn client(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns("client"), program]);
        c
    }

    /// Test servers on `ports` of every real server (their sockets made in its
    /// namespace): each connection is handed to `serve`, with the server's name, on a
    /// thread of its own. They stop accepting when the returned guard is dropped.
    #[allow(dead_code)] // the namespace tests'
    pub fn serve_on_servers(
        &self,
        ports: &[u16],
        serve: fn(TcpStream, &'static str),
    ) -> Result<ServerThreads> {
        let stop = Arc::new(AtomicBool::new(false));
        for s in &SERVERS {
            for &port in ports {
                let l = in_netns(&self.ns(s.name), || {
                    Ok(TcpListener::bind(("0.0.0.0", port))?)
                })
                .with_context(|| format!("listening on {}:{port}", s.name))?;
                l.set_nonblocking(true)?;
                let (stop, name) = (stop.clone(), s.name);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match l.accept() {
                            Ok((c, _)) => {
                                std::thread::spawn(move || serve(c, name));
                            }
                            Err(_) => sleep(Duration::from_millis(5)),
                        }
                    }
                });
            }
        }
        Ok(ServerThreads { stop })
    }

    /// One request from the client (one curl, one connection, a fresh source port, at
    /// most 3 s): curl's exit status and the body, trimmed.
    pub fn request(&self, url: &str) -> Result<(std::process::ExitStatus, String)> {
        let out = self
            .client("curl")
            .args(["-s", "--max-time", "3", url])
            .output()
            .context("running curl")?;
        Ok((
            out.status,
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        ))
    }

    /// Stops the processes, detaches the XDP programs, removes the namespaces and
    /// files. Idempotent; also run on drop.
    pub fn cleanup(&mut self) -> Result<()> {
        if let Some(mut d) = self.daemon.take() {
            stop(&mut d, Duration::from_secs(5))?;
        }
        for mut n in self.nginx.drain(..) {
            stop(&mut n, Duration::from_secs(3))?;
        }
        self.xdp = None;
        remove_leftovers(&self.prefix)?;
        let left = namespaces(&self.prefix)?;
        if !left.is_empty() {
            bail!("namespaces left behind: {left:?}");
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("cleaning up {}*: {e:#}", self.prefix);
        }
    }
}
