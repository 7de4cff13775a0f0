//! The active checks: one attempt of each kind, bounded by its timeout, on the tokio
//! runtime (no thread per check).
//!
//! - `tcp`, `mode = "half-open"` (the default): a SYN from a raw socket, a SYN-ACK
//!   passes, an RST or ICMP error fails ([`halfopen`]); connects instead, with a
//!   warning, when raw sockets cannot be opened (no CAP_NET_RAW).
//! - `tcp`, `mode = "connect"`: a connect; closed with an RST (SO_LINGER 0, as HAProxy
//!   does) so that tens of thousands of checks a second leave no TIME_WAIT behind.
//! - `http`/`https`: one HTTP/1.1 request (hyper; TLS with rustls, verified against
//!   the system's roots unless `tls_verify = false`), status checked against the
//!   accepted ranges, and the first 64 KiB of the body searched when asked.
//! - `udp`: a datagram sent on a connected socket; a reply (containing `expect`, if
//!   set) passes; an ICMP port unreachable fails at once, silence at the timeout.
//! - `exec`: `/bin/sh -c <command>` in its own process group, killed (the whole group)
//!   when the timeout expires; exit status 0 passes.

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use lb_common::state::{HttpProbe, Probe, ResolvedCheck, TcpMode};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpStream, UdpSocket},
};

pub mod halfopen;

/// How much of a body `body_contains` looks at.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The outcome of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    /// What happened: "connected", "HTTP 200", "timeout", "connection refused", …
    pub detail: String,
}

impl Outcome {
    fn pass(detail: impl Into<String>) -> Self {
        Outcome {
            ok: true,
            detail: detail.into(),
        }
    }
    fn fail(detail: impl Into<String>) -> Self {
        Outcome {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// Extra context for an exec check's environment.
#[derive(Clone, Debug, Default)]
pub struct ExecEnv {
    pub service: String,
    pub backend: String,
}

/// One attempt of `check`, never longer than its timeout (plus the time to kill an
/// exec check's processes). Returns the outcome and how long it took.
pub async fn run(check: &ResolvedCheck, env: &ExecEnv) -> (Outcome, Duration) {
    let start = Instant::now();
    let out = match &check.probe {
        Probe::Exec { command, timeout } => exec(command, timeout.std(), check.target, env).await,
        probe => {
            let timeout = check.timeout.std();
            match tokio::time::timeout(timeout, attempt(probe, check.target, timeout)).await {
                Ok(o) => o,
                Err(_) => Outcome::fail("timeout"),
            }
        }
    };
    (out, start.elapsed())
}

async fn attempt(probe: &Probe, target: SocketAddr, timeout: Duration) -> Outcome {
    match probe {
        Probe::Tcp {
            mode: TcpMode::HalfOpen,
        } => match halfopen::shared().filter(|h| h.supports(&target)) {
            Some(h) => half_open(h, target, timeout).await,
            None => tcp(target).await,
        },
        Probe::Tcp {
            mode: TcpMode::Connect,
        } => tcp(target).await,
        Probe::Http(h) => http(h, target).await,
        Probe::Udp { payload, expect } => udp(target, payload, expect.as_deref()).await,
        Probe::Exec { .. } => unreachable!("run handles exec"),
    }
}

/// A short description of an I/O error: "connection refused", "no route to host".
pub fn io_detail(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset".into(),
        TimedOut => "timeout".into(),
        HostUnreachable => "host unreachable".into(),
        NetworkUnreachable => "network unreachable".into(),
        _ => {
            let s = e.to_string();
            // "No route to host (os error 113)" → "no route to host"
            let s = s.split(" (os error").next().unwrap_or(&s).to_string();
            let mut c = s.chars();
            match c.next() {
                Some(f) => f.to_lowercase().chain(c).collect(),
                None => s,
            }
        }
    }
}

async fn tcp(target: SocketAddr) -> Outcome {
    match TcpStream::connect(target).await {
        Ok(s) => {
            let _ = s.set_zero_linger();
            Outcome::pass("connected")
        }
        // The handshake completed and the server closed at once with an RST (a
        // refused connection is ECONNREFUSED): the port is open.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Outcome::pass("connected (then reset by the server)")
        }
        Err(e) => Outcome::fail(io_detail(&e)),
    }
}

/// A half-open probe through `engine`.
pub async fn half_open(
    engine: &Arc<halfopen::HalfOpen>,
    target: SocketAddr,
    timeout: Duration,
) -> Outcome {
    match engine.probe(target, timeout).await {
        Ok(halfopen::Answer::Open) => Outcome::pass("SYN-ACK (half-open)"),
        Ok(halfopen::Answer::Refused) => Outcome::fail("connection refused"),
        Ok(halfopen::Answer::Unreachable(what)) => Outcome::fail(what),
        Err(e) => Outcome::fail(io_detail(&e)),
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn http(h: &HttpProbe, target: SocketAddr) -> Outcome {
    let tcp = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(e) => return Outcome::fail(io_detail(&e)),
    };
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_zero_linger();
    let io: Box<dyn Io> = if h.tls {
        match tls_connect(tcp, h, target).await {
            Ok(s) => Box::new(s),
            Err(o) => return o,
        }
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(io)).await {
        Ok(x) => x,
        Err(e) => return Outcome::fail(format!("HTTP: {e}")),
    };
    let driver = tokio::spawn(conn);
    let out = request(&mut sender, h).await;
    driver.abort();
    out
}

async fn request(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    h: &HttpProbe,
) -> Outcome {
    let req = match Request::builder()
        .method(h.method.as_str())
        .uri(h.path.as_str())
        .header(hyper::header::HOST, h.host.as_str())
        .header(
            hyper::header::USER_AGENT,
            concat!("lb-daemon-health/", env!("CARGO_PKG_VERSION")),
        )
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
    {
        Ok(r) => r,
        Err(e) => return Outcome::fail(format!("HTTP request: {e}")),
    };
    let res = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => return Outcome::fail(format!("HTTP: {}", hyper_detail(&e))),
    };
    let status = res.status().as_u16();
    if !h.expect_status.iter().any(|r| r.contains(status)) {
        let want: Vec<String> = h.expect_status.iter().map(ToString::to_string).collect();
        return Outcome::fail(format!("HTTP {status}, expected {}", want.join(",")));
    }
    let Some(needle) = &h.body_contains else {
        return Outcome::pass(format!("HTTP {status}"));
    };
    let mut body = res.into_body();
    let mut seen: Vec<u8> = Vec::new();
    while seen.len() < BODY_LIMIT {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    let room = BODY_LIMIT - seen.len();
                    seen.extend_from_slice(&d[..d.len().min(room)]);
                    if contains(&seen, needle.as_bytes()) {
                        return Outcome::pass(format!("HTTP {status}, body contains {needle:?}"));
                    }
                }
            }
            Some(Err(e)) => return Outcome::fail(format!("HTTP body: {}", hyper_detail(&e))),
            None => break,
        }
    }
    if contains(&seen, needle.as_bytes()) {
        return Outcome::pass(format!("HTTP {status}, body contains {needle:?}"));
    }
    Outcome::fail(format!(
        "HTTP {status}, body does not contain {needle:?} (first {} bytes read)",
        seen.len()
    ))
}

fn hyper_detail(e: &hyper::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            s = format!("{s}: {}", io_detail(io));
            break;
        }
        s = format!("{s}: {inner}");
        src = inner.source();
    }
    s
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// The two TLS client configurations (verifying, and not), built once.
fn tls_config(verify: bool) -> Arc<rustls::ClientConfig> {
    static VERIFY: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    static NO_VERIFY: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let provider = || Arc::new(rustls::crypto::ring::default_provider());
    if verify {
        VERIFY
            .get_or_init(|| {
                let mut roots = rustls::RootCertStore::empty();
                let found = rustls_native_certs::load_native_certs();
                for e in &found.errors {
                    tracing::warn!(error = %e, "loading the system's TLS roots");
                }
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    tracing::warn!("no system TLS roots: https checks with tls_verify will fail");
                }
                Arc::new(
                    rustls::ClientConfig::builder_with_provider(provider())
                        .with_safe_default_protocol_versions()
                        .expect("ring supports the default protocol versions")
                        .with_root_certificates(roots)
                        .with_no_client_auth(),
                )
            })
            .clone()
    } else {
        NO_VERIFY
            .get_or_init(|| {
                let p = provider();
                Arc::new(
                    rustls::ClientConfig::builder_with_provider(p.clone())
                        .with_safe_default_protocol_versions()
                        .expect("ring supports the default protocol versions")
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(NoVerify(p)))
                        .with_no_client_auth(),
                )
            })
            .clone()
    }
}

/// Accepts any certificate (`tls_verify = false`), still checking the handshake's
/// signatures so that the connection is a real TLS one.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn tls_connect(
    tcp: TcpStream,
    h: &HttpProbe,
    target: SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Outcome> {
    // The server name: the Host header without its port (a name or an address), else
    // the check address.
    let host = h.host.as_str();
    let bare = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    let name = rustls::pki_types::ServerName::try_from(bare.to_string())
        .unwrap_or_else(|_| rustls::pki_types::ServerName::IpAddress(target.ip().into()));
    let connector = tokio_rustls::TlsConnector::from(tls_config(h.tls_verify));
    connector
        .connect(name, tcp)
        .await
        .map_err(|e| Outcome::fail(format!("TLS: {}", tls_detail(&e))))
}

fn tls_detail(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(t) => t.to_string(),
        None => io_detail(e),
    }
}

async fn udp(target: SocketAddr, payload: &[u8], expect: Option<&[u8]>) -> Outcome {
    let local: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = match UdpSocket::bind(local).await {
        Ok(s) => s,
        Err(e) => return Outcome::fail(format!("UDP socket: {}", io_detail(&e))),
    };
    if let Err(e) = sock.connect(target).await {
        return Outcome::fail(io_detail(&e));
    }
    if let Err(e) = sock.send(payload).await {
        return Outcome::fail(io_detail(&e));
    }
    let mut buf = vec![0u8; 65536];
    match sock.recv(&mut buf).await {
        Ok(n) => {
            let reply = &buf[..n];
            match expect {
                None => Outcome::pass(format!("reply of {n} bytes")),
                Some(want) if contains(reply, want) => {
                    Outcome::pass(format!("reply of {n} bytes contains the expected"))
                }
                Some(want) => Outcome::fail(format!(
                    "reply of {n} bytes lacks {:?}",
                    String::from_utf8_lossy(want)
                )),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Outcome::fail("port unreachable (ICMP)")
        }
        Err(e) => Outcome::fail(io_detail(&e)),
    }
}

async fn exec(command: &str, timeout: Duration, target: SocketAddr, env: &ExecEnv) -> Outcome {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .env("LB_CHECK_ADDRESS", target.ip().to_string())
        .env("LB_CHECK_PORT", target.port().to_string())
        .env("LB_SERVICE", &env.service)
        .env("LB_BACKEND", &env.backend)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::fail(format!("cannot run /bin/sh: {}", io_detail(&e))),
    };
    // Kills the whole group if the check is abandoned: timeout, or the task dropped
    // (state change, shutdown).
    let mut group = GroupKill(child.id());
    let mut stderr = child.stderr.take();
    let wait = async {
        let mut err = Vec::new();
        if let Some(s) = stderr.as_mut() {
            use tokio::io::AsyncReadExt as _;
            let _ = s.take(4096).read_to_end(&mut err).await;
        }
        (child.wait().await, err)
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok((Ok(st), err)) => {
            group.0 = None;
            if st.success() {
                Outcome::pass("exit status 0")
            } else {
                let first = String::from_utf8_lossy(&err);
                let first = first.lines().next().unwrap_or("").trim();
                let what = match st.code() {
                    Some(c) => format!("exit status {c}"),
                    None => format!("{st}"),
                };
                if first.is_empty() {
                    Outcome::fail(what)
                } else {
                    Outcome::fail(format!("{what}: {first}"))
                }
            }
        }
        Ok((Err(e), _)) => Outcome::fail(format!("waiting for the command: {}", io_detail(&e))),
        // `group` kills the shell and what it started.
        Err(_) => Outcome::fail("timeout"),
    }
}

/// SIGKILL to a process group on drop (unless disarmed, once its leader was reaped).
struct GroupKill(Option<u32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) on the process group created for a child not yet reaped.
            unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::state::{CheckType, Dur, StatusRange};
    use tokio::{io::AsyncWriteExt as _, net::TcpListener};

    fn check(probe: Probe, target: SocketAddr, timeout_ms: u64) -> ResolvedCheck {
        ResolvedCheck {
            kind: CheckType::Tcp,
            probe,
            target,
            interval: Dur::secs(1),
            timeout: Dur(timeout_ms),
            rise: 2,
            fall: 3,
            retry: 0,
            delay_before_retry: Dur::secs(1),
        }
    }

    fn http_probe(expect: &[(u16, u16)], body: Option<&str>) -> Probe {
        Probe::Http(HttpProbe {
            method: "GET".into(),
            path: "/health".into(),
            host: "test.local".into(),
            expect_status: expect
                .iter()
                .map(|&(lo, hi)| StatusRange { lo, hi })
                .collect(),
            body_contains: body.map(Into::into),
            tls: false,
            tls_verify: true,
        })
    }

    /// A one-request-per-connection HTTP server answering `status` and `body`;
    /// returns its address and the requests it saw.
    async fn http_server(
        status: u16,
        body: &'static str,
    ) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let seen = s2.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt as _;
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&got).into_owned());
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        (addr, seen)
    }

    async fn closed_port() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        a
    }

    fn tcp_probe(mode: TcpMode) -> Probe {
        Probe::Tcp { mode }
    }

    /// Half-open needs CAP_NET_RAW; without it the check connects.
    fn half_open_available() -> bool {
        halfopen::shared().is_some()
    }

    #[tokio::test]
    async fn tcp_open_passes_and_refused_fails_in_both_modes() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let half_open_pass = if half_open_available() {
            "SYN-ACK (half-open)"
        } else {
            "connected"
        };
        for (mode, pass) in [
            (TcpMode::Connect, "connected"),
            (TcpMode::HalfOpen, half_open_pass),
        ] {
            let (o, _) = run(&check(tcp_probe(mode), a, 1000), &ExecEnv::default()).await;
            assert_eq!(o, Outcome::pass(pass), "{mode}");
            let (o, _) = run(
                &check(tcp_probe(mode), closed_port().await, 1000),
                &ExecEnv::default(),
            )
            .await;
            assert_eq!(o, Outcome::fail("connection refused"), "{mode}");
        }
    }

    #[tokio::test]
    async fn half_open_checks_never_reach_the_application() {
        if !half_open_available() {
            eprintln!("skipped: half-open checks need CAP_NET_RAW");
            return;
        }
        let l = TcpListener::bind("[::1]:0").await.unwrap();
        let a = l.local_addr().unwrap();
        for _ in 0..20 {
            let (o, _) = run(
                &check(tcp_probe(TcpMode::HalfOpen), a, 1000),
                &ExecEnv::default(),
            )
            .await;
            assert_eq!(o, Outcome::pass("SYN-ACK (half-open)"));
        }
        let accepted = tokio::time::timeout(Duration::from_millis(200), l.accept()).await;
        assert!(accepted.is_err(), "accepted {accepted:?}");
        // A connect check does reach it (the listener above does accept).
        let (o, _) = run(
            &check(tcp_probe(TcpMode::Connect), a, 1000),
            &ExecEnv::default(),
        )
        .await;
        assert_eq!(o, Outcome::pass("connected"));
        let accepted = tokio::time::timeout(Duration::from_millis(1000), l.accept()).await;
        assert!(matches!(accepted, Ok(Ok(_))), "{accepted:?}");
    }

    #[tokio::test]
    async fn tcp_timeout_is_honoured() {
        // A blackhole: TEST-NET-1 is never routed here (the connect hangs or fails fast
        // with "network unreachable"); either way it must not pass nor outlive the timeout.
        for mode in [TcpMode::Connect, TcpMode::HalfOpen] {
            let (o, took) = run(
                &check(tcp_probe(mode), "192.0.2.1:9".parse().unwrap(), 300),
                &ExecEnv::default(),
            )
            .await;
            assert!(!o.ok, "{mode}");
            assert!(took < Duration::from_millis(800), "{mode}: {took:?}");
        }
    }

    #[tokio::test]
    async fn http_status_and_body_are_checked() {
        let (a, seen) = http_server(200, "all good here").await;
        let (o, _) = run(
            &check(http_probe(&[(200, 299)], None), a, 2000),
            &ExecEnv::default(),
        )
        .await;
        assert_eq!(o, Outcome::pass("HTTP 200"));
        let req = seen.lock().unwrap()[0].clone();
        assert!(req.starts_with("GET /health HTTP/1.1\r\n"), "{req}");
        assert!(
            req.to_ascii_lowercase().contains("host: test.local\r\n"),
            "{req}"
        );
        // Body substring present / missing.
        let (o, _) = run(
            &check(http_probe(&[(200, 200)], Some("good")), a, 2000),
            &ExecEnv::default(),
        )
        .await;
        assert!(o.ok, "{o:?}");
        let (o, _) = run(
            &check(http_probe(&[(200, 200)], Some("bad")), a, 2000),
            &ExecEnv::default(),
        )
        .await;
        assert!(
            !o.ok && o.detail.contains("does not contain \"bad\""),
            "{o:?}"
        );
        // Wrong status.
        let (a, _) = http_server(503, "down").await;
        let (o, _) = run(
            &check(http_probe(&[(200, 299)], None), a, 2000),
            &ExecEnv::default(),
        )
        .await;
        assert_eq!(o, Outcome::fail("HTTP 503, expected 200-299"));
        let (o, _) = run(
            &check(http_probe(&[(200, 299), (503, 503)], None), a, 2000),
            &ExecEnv::default(),
        )
        .await;
        assert!(o.ok, "{o:?}");
        // Nobody listening.
        let (o, _) = run(
            &check(http_probe(&[(200, 299)], None), closed_port().await, 2000),
            &ExecEnv::default(),
        )
        .await;
        assert_eq!(o, Outcome::fail("connection refused"));
    }

    #[tokio::test]
    async fn http_server_that_never_answers_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let (o, took) = run(
            &check(http_probe(&[(200, 299)], None), a, 300),
            &ExecEnv::default(),
        )
        .await;
        assert_eq!(o, Outcome::fail("timeout"));
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(800),
            "{took:?}"
        );
    }

    /// A TLS server with a fresh self-signed certificate for "localhost".
    async fn tls_server() -> SocketAddr {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = rustls::pki_types::CertificateDer::from(ck.cert.der().to_vec());
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt as _;
                    let Ok(mut s) = acceptor.accept(s).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecure")
                        .await;
                    let _ = s.shutdown().await;
                });
            }
        });
        a
    }

    fn https_probe(verify: bool, body: Option<&str>) -> Probe {
        let mut p = http_probe(&[(200, 299)], body);
        if let Probe::Http(h) = &mut p {
            h.tls = true;
            h.tls_verify = verify;
            h.host = "localhost".into();
        }
        p
    }

    #[tokio::test]
    async fn https_verifies_certificates_unless_told_not_to() {
        let a = tls_server().await;
        let (o, _) = run(
            &check(https_probe(false, Some("secure")), a, 2000),
            &ExecEnv::default(),
        )
        .await;
        assert_eq!(o, Outcome::pass("HTTP 200, body contains \"secure\""));
        let (o, _) = run(
            &check(https_probe(true, None), a, 2000),
            &ExecEnv::default(),
        )
        .await;
        assert!(
            !o.ok && o.detail.starts_with("TLS: invalid peer certificate"),
            "{o:?}"
        );
        // TLS to a plain HTTP server fails as TLS.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let (o, _) = run(
            &check(https_probe(false, None), plain, 2000),
            &ExecEnv::default(),
        )
        .await;
        assert!(!o.ok && o.detail.starts_with("TLS: "), "{o:?}");
    }

    #[tokio::test]
    async fn udp_reply_passes_silence_times_out_and_unreachable_fails() {
        let srv = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = srv.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = srv.recv_from(&mut buf).await {
                if &buf[..n] == b"ping" {
                    let _ = srv.send_to(b"pong!", from).await;
                }
            }
        });
        let probe = |payload: &str, expect: Option<&str>| Probe::Udp {
            payload: payload.as_bytes().to_vec(),
            expect: expect.map(|e| e.as_bytes().to_vec()),
        };
        let (o, _) = run(&check(probe("ping", None), a, 1000), &ExecEnv::default()).await;
        assert!(o.ok, "{o:?}");
        let (o, _) = run(
            &check(probe("ping", Some("pong")), a, 1000),
            &ExecEnv::default(),
        )
        .await;
        assert!(o.ok, "{o:?}");
        let (o, _) = run(
            &check(probe("ping", Some("nope")), a, 1000),
            &ExecEnv::default(),
        )
        .await;
        assert!(!o.ok && o.detail.contains("lacks"), "{o:?}");
        let (o, took) = run(&check(probe("other", None), a, 300), &ExecEnv::default()).await;
        assert_eq!(o, Outcome::fail("timeout"));
        assert!(took < Duration::from_millis(800));
        // Nothing bound there: ICMP port unreachable.
        let dead = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let (o, _) = run(&check(probe("ping", None), dead, 1000), &ExecEnv::default()).await;
        assert_eq!(o, Outcome::fail("port unreachable (ICMP)"));
    }

    #[tokio::test]
    async fn exec_exit_status_decides() {
        let exec = |c: &str, ms: u64| Probe::Exec {
            command: c.into(),
            timeout: Dur(ms),
        };
        let a: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let env = ExecEnv {
            service: "tcp 10.0.0.1:80".into(),
            backend: "10.0.0.11".into(),
        };
        let (o, _) = run(
            &check(
                exec(
                    "test \"$LB_CHECK_PORT\" = 80 && test \"$LB_BACKEND\" = 10.0.0.11",
                    2000,
                ),
                a,
                2000,
            ),
            &env,
        )
        .await;
        assert_eq!(o, Outcome::pass("exit status 0"));
        let (o, _) = run(&check(exec("echo broken >&2; exit 3", 2000), a, 2000), &env).await;
        assert_eq!(o, Outcome::fail("exit status 3: broken"));
    }

    #[tokio::test]
    async fn exec_timeout_kills_the_whole_process_group() {
        let marker = format!("sleep 30.{}", std::process::id());
        let probe = Probe::Exec {
            command: format!("{marker} & {marker}; true"),
            timeout: Dur(300),
        };
        let (o, took) = run(
            &check(probe, "127.0.0.1:0".parse().unwrap(), 300),
            &ExecEnv::default(),
        )
        .await;
        assert_eq!(o, Outcome::fail("timeout"));
        assert!(took < Duration::from_millis(1000), "{took:?}");
        // Both sleeps (the background one too) are gone.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let left: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&marker[6..]) && c.starts_with("sleep"))
            .collect();
        assert!(left.is_empty(), "left running: {left:?}");
    }
}
