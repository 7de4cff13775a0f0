//! `lbctl`: the load balancer's command line, in two forms that do the same things
//! through the same operations (`lb_common::ops`):
//!
//! - subcommands: `lbctl service add 10.0.0.1:80 -s rr`, `lbctl backend drain …`, `lbctl list`;
//! - ipvsadm's flags, when the first argument is an option: `lbctl -A -t 10.0.0.1:80 -s rr`,
//!   `lbctl -L -n`, `ipvsadm -S -n | lbctl -R`.
//!
//! Every change is read-modify-write of the daemon's desired state: GET /v1/state, apply
//! the operations locally, PUT /v1/state with the generation read (retried once on 409).
//!
//! Exit status: 0 done; 1 refused (by the daemon, or conflicting with its state);
//! 2 usage error; 3 the daemon cannot be reached. Messages start with `lbctl: `.

mod cli;
mod client;

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use clap::{CommandFactory, Parser};
use hyper::StatusCode;
use lb_common::{
    ops::{
        self, Command, ConnEntry, ListFormat, ListOptions, ListRequest, Op, StatsView,
        parse_addr_port,
    },
    state::{Mac, Proto, RealServer, Service, ServiceId, State},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    cli::{BackendCmd, Cli, Cmd, ServiceCmd, Svc},
    client::{ApiError, Client, Endpoint, query_escape},
};

const REFUSED: i32 = 1;
const USAGE: i32 = 2;
const UNREACHABLE: i32 = 3;

/// A failure: exit status and message (printed after `lbctl: `).
#[derive(Debug)]
struct Exit(i32, String);

type Res<T = ()> = Result<T, Exit>;

fn usage(msg: impl std::fmt::Display) -> Exit {
    Exit(USAGE, msg.to_string())
}

fn refused(msg: impl std::fmt::Display) -> Exit {
    Exit(REFUSED, msg.to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let code = match run(&args) {
        Ok(()) => 0,
        Err(Exit(code, msg)) => {
            if !msg.is_empty() {
                eprintln!("lbctl: {msg}");
            }
            code
        }
    };
    std::process::exit(code);
}

/// Global options as the ipvsadm form takes them (anywhere on the line).
struct Globals {
    socket: Option<String>,
    url: Option<String>,
    token: Option<String>,
    strict: bool,
}

/// Splits `--socket`, `--url`, `--token` and `--strict` off the arguments.
fn split_globals(args: &[String]) -> Result<(Globals, Vec<String>), String> {
    let mut g = Globals {
        socket: None,
        url: None,
        token: None,
        strict: false,
    };
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--strict" {
            g.strict = true;
            continue;
        }
        let mut matched = false;
        for (name, slot) in [
            ("--socket", &mut g.socket),
            ("--url", &mut g.url),
            ("--token", &mut g.token),
        ] {
            if a == name {
                let v = args
                    .get(i)
                    .ok_or_else(|| format!("option {name} needs a value"))?;
                i += 1;
                *slot = Some(v.clone());
                matched = true;
            } else if let Some(v) = a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
                *slot = Some(v.to_string());
                matched = true;
            }
        }
        if !matched {
            rest.push(a.clone());
        }
    }
    Ok((g, rest))
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn run(args: &[String]) -> Res {
    let rest_args = args.get(1..).unwrap_or(&[]);
    if let Ok((g, rest)) = split_globals(rest_args) {
        let ipvsadm = match rest.first() {
            // Bare `lbctl` lists the table, as bare `ipvsadm` does.
            None => true,
            Some(a) => {
                a.starts_with('-') && !matches!(a.as_str(), "-h" | "--help" | "-V" | "--version")
            }
        };
        if ipvsadm {
            return run_ipvsadm(g, &rest);
        }
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(e.kind(), DisplayHelp | DisplayVersion) {
                let _ = e.print();
                return Ok(());
            }
            let text = e.render().to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text).trim_end();
            return Err(usage(text));
        }
    };
    run_subcommand(cli)
}

struct Ctx {
    client: Client,
    strict: bool,
}

fn ctx(socket: &Path, url: Option<&str>, token: Option<String>, strict: bool) -> Res<Ctx> {
    let endpoint = match url {
        Some(u) => Endpoint::from_url(u).map_err(usage)?,
        None => Endpoint::Unix(socket.to_path_buf()),
    };
    let client = Client::new(endpoint, token).map_err(|e| Exit(UNREACHABLE, e))?;
    Ok(Ctx { client, strict })
}

// ---------------------------------------------------------------------------
// The ipvsadm form
// ---------------------------------------------------------------------------

fn run_ipvsadm(g: Globals, rest: &[String]) -> Res {
    let (cmd, warnings) = if rest.is_empty() {
        (Command::List(ListRequest::default()), Vec::new())
    } else {
        ops::parse_ipvsadm_args(rest, g.strict).map_err(|e| {
            usage(format!(
                "{e:#}\nTry 'lbctl --help' for the ipvsadm form and the subcommands."
            ))
        })?
    };
    match cmd {
        Command::Help => {
            let _ = Cli::command().print_long_help();
            return Ok(());
        }
        Command::Version => {
            println!("lbctl {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        _ => {}
    }
    warn_all(&warnings);
    let socket = g
        .socket
        .or_else(|| env_nonempty("LBCTL_SOCKET"))
        .unwrap_or_else(|| cli::DEFAULT_SOCKET.to_string());
    let url = g.url.or_else(|| env_nonempty("LBCTL_URL"));
    let token = g.token.or_else(|| env_nonempty("LBCTL_TOKEN"));
    let c = ctx(Path::new(&socket), url.as_deref(), token, g.strict)?;
    match cmd {
        Command::Op(op) => mutate(&c, &[op], None),
        Command::List(req) => list(&c, req),
        Command::Zero(svc) => zero(&c, svc),
        Command::Save => save(&c),
        Command::Restore => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| usage(format!("reading standard input: {e}")))?;
            restore(&c, &text, false)
        }
        Command::Help | Command::Version => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// The subcommand form
// ---------------------------------------------------------------------------

fn service_id(s: &Svc) -> Res<ServiceId> {
    ops::parse_service(s.proto.into(), &s.service).map_err(|e| usage(format!("{e:#}")))
}

fn opt_service_id(s: &cli::OptSvc) -> Res<Option<ServiceId>> {
    s.service
        .as_deref()
        .map(|v| ops::parse_service(s.proto.into(), v).map_err(|e| usage(format!("{e:#}"))))
        .transpose()
}

fn real_addr(id: &ServiceId, real: &str) -> Res<IpAddr> {
    ops::parse_real(id, real).map_err(|e| usage(format!("{e:#}")))
}

fn scheduler(c: &Ctx, id: &ServiceId, name: &str) -> Res<lb_common::state::Scheduler> {
    let (s, w) =
        ops::parse_scheduler(name, c.strict).map_err(|e| usage(format!("service {id}: {e:#}")))?;
    if let Some(w) = w {
        warn(&format!("service {id}: {w}"));
    }
    Ok(s)
}

fn persistence(p: u32) -> Res<u32> {
    if p > ops::MAX_PERSISTENCE {
        return Err(usage(format!(
            "persistence {p}: the maximum is {} s (31 days)",
            ops::MAX_PERSISTENCE
        )));
    }
    Ok(p)
}

fn weight(w: u32) -> Res<u32> {
    if w > ops::MAX_WEIGHT {
        return Err(usage(format!(
            "weight {w}: the range is 0-{}",
            ops::MAX_WEIGHT
        )));
    }
    Ok(w)
}

fn run_subcommand(cli: Cli) -> Res {
    let g = cli.global;
    if let Cmd::Completions { shell } = cli.cmd {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "lbctl", &mut out);
        write_out(&String::from_utf8_lossy(&out));
        return Ok(());
    }
    let c = ctx(&g.socket, g.url.as_deref(), g.token.clone(), g.strict)?;
    match cli.cmd {
        Cmd::Service { cmd } => {
            let op = match cmd {
                ServiceCmd::Add {
                    svc,
                    scheduler: s,
                    persistence: p,
                } => {
                    let id = service_id(&svc)?;
                    Op::AddService(Service {
                        address: id.address,
                        port: id.port,
                        proto: id.proto,
                        scheduler: scheduler(&c, &id, &s)?,
                        persistence: persistence(p.unwrap_or(0))?,
                        backends: Vec::new(),
                        health: None,
                    })
                }
                ServiceCmd::Edit {
                    svc,
                    scheduler: s,
                    persistence: p,
                } => {
                    let id = service_id(&svc)?;
                    Op::EditService {
                        id,
                        scheduler: s.map(|s| scheduler(&c, &id, &s)).transpose()?,
                        persistence: p.map(persistence).transpose()?,
                    }
                }
                ServiceCmd::Del { svc } => Op::DelService(service_id(&svc)?),
            };
            mutate(&c, &[op], None)
        }
        Cmd::Backend { cmd } => {
            let op = match cmd {
                BackendCmd::Add {
                    svc,
                    real,
                    weight: w,
                    forward,
                    mac,
                    gue_port,
                } => {
                    let id = service_id(&svc)?;
                    let address = real_addr(&id, &real)?;
                    let mac = mac
                        .map(|m| m.parse::<Mac>().map_err(|e| usage(format!("--mac: {e:#}"))))
                        .transpose()?;
                    if gue_port == 0 {
                        return Err(usage("--gue-port must not be 0"));
                    }
                    Op::AddReal {
                        svc: id,
                        real: RealServer {
                            address,
                            weight: weight(w)?,
                            forward: forward.into(),
                            mac,
                            gue_port,
                            health: None,
                        },
                    }
                }
                BackendCmd::Edit {
                    svc,
                    real,
                    weight: w,
                    forward,
                } => {
                    let id = service_id(&svc)?;
                    Op::EditReal {
                        svc: id,
                        address: real_addr(&id, &real)?,
                        weight: w.map(weight).transpose()?,
                        forward: forward.map(Into::into),
                    }
                }
                BackendCmd::Del { svc, real } => {
                    let id = service_id(&svc)?;
                    Op::DelReal {
                        svc: id,
                        address: real_addr(&id, &real)?,
                    }
                }
                BackendCmd::Drain { svc, real } => {
                    let id = service_id(&svc)?;
                    Op::EditReal {
                        svc: id,
                        address: real_addr(&id, &real)?,
                        weight: Some(0),
                        forward: None,
                    }
                }
            };
            mutate(&c, &[op], None)
        }
        Cmd::List(a) => {
            let format = if a.stats {
                ListFormat::Stats
            } else if a.rate {
                ListFormat::Rate
            } else if a.connections {
                ListFormat::Conns
            } else {
                ListFormat::Plain
            };
            let service = opt_service_id(&a.svc)?;
            if format == ListFormat::Conns && service.is_some() {
                return Err(usage(
                    "-c lists the whole connection table: no service with it",
                ));
            }
            list(
                &c,
                ListRequest {
                    format,
                    options: ListOptions {
                        service,
                        exact: a.exact,
                        nosort: a.nosort,
                        ..Default::default()
                    },
                },
            )
        }
        Cmd::Stats(a) => stats(&c, a.exact),
        Cmd::Zero(s) => zero(&c, opt_service_id(&s)?),
        Cmd::Save => save(&c),
        Cmd::Restore(a) => {
            let mut text = String::new();
            match a.file.as_deref() {
                None => std::io::stdin().read_to_string(&mut text).map(|_| ()),
                Some(p) if p == Path::new("-") => {
                    std::io::stdin().read_to_string(&mut text).map(|_| ())
                }
                Some(p) => std::fs::read_to_string(p).map(|t| text = t),
            }
            .map_err(|e| {
                usage(format!(
                    "reading {}: {e}",
                    a.file
                        .as_deref()
                        .map_or("standard input".into(), |p| p.display().to_string())
                ))
            })?;
            restore(&c, &text, a.replace)
        }
        Cmd::Clear => mutate(&c, &[Op::Clear], None),
        Cmd::Status => status(&c),
        Cmd::Events(a) => events(&c, a.limit),
        Cmd::Route(a) => route(&c, &a.client, &a.vip, a.proto.into()),
        Cmd::Shutdown { unload } => {
            c.client
                .post("/v1/shutdown", &json!({ "unload": unload }))
                .map_err(|e| api_error(&c, e))?;
            Ok(())
        }
        Cmd::Completions { .. } => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// Operations, shared by both forms
// ---------------------------------------------------------------------------

fn warn(w: &str) {
    eprintln!("lbctl: warning: {w}");
}

fn warn_all(ws: &[String]) {
    for w in ws {
        warn(w);
    }
}

/// Writes to standard output; a closed pipe (`| head`) is not an error.
fn write_out(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

fn api_error(c: &Ctx, e: ApiError) -> Exit {
    match e {
        ApiError::Unreachable(m) => {
            let hint = match c.client.endpoint() {
                Endpoint::Unix(_) => {
                    " (is lb-daemon running? --socket or LBCTL_SOCKET name another socket)"
                }
                Endpoint::Tcp { .. } => " (is lb-daemon's TCP listener enabled?)",
            };
            Exit(
                UNREACHABLE,
                format!(
                    "cannot reach the daemon at {}: {m}{hint}",
                    c.client.endpoint().describe()
                ),
            )
        }
        ApiError::Status(s, m) if s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN => {
            Exit(
                UNREACHABLE,
                format!(
                    "the daemon at {} refused access ({}): {m} (check --token / LBCTL_TOKEN)",
                    c.client.endpoint().describe(),
                    s.as_u16()
                ),
            )
        }
        ApiError::Status(_, m) => refused(m),
    }
}

fn bad_answer(what: &str, e: impl std::fmt::Display) -> Exit {
    Exit(
        UNREACHABLE,
        format!("the daemon's answer to {what} is not what lbctl expects: {e}"),
    )
}

fn get_state(c: &Ctx) -> Res<(u64, State)> {
    let v = c.client.get("/v1/state").map_err(|e| api_error(c, e))?;
    let generation = v
        .get("generation")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad_answer("GET /v1/state", "no generation"))?;
    let state: State = serde_json::from_value(v.get("state").cloned().unwrap_or(Value::Null))
        .map_err(|e| bad_answer("GET /v1/state", e))?;
    Ok((generation, state))
}

fn get_stats(c: &Ctx) -> Res<StatsView> {
    let v = c.client.get("/v1/stats").map_err(|e| api_error(c, e))?;
    serde_json::from_value(v).map_err(|e| bad_answer("GET /v1/stats", e))
}

/// GET state, apply `ops` locally (all or nothing), PUT it with the generation read;
/// on 409 (someone else changed it meanwhile) once more from a fresh GET.
/// `lines` labels errors with input line numbers (restore).
fn mutate(c: &Ctx, ops: &[Op], lines: Option<&[usize]>) -> Res {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (generation, mut state) = get_state(c)?;
        for (i, op) in ops.iter().enumerate() {
            if let Err(e) = ops::apply(&mut state, op) {
                return Err(refused(match lines.and_then(|l| l.get(i)) {
                    Some(&0) => format!("--replace: {e:#}"),
                    Some(n) => format!("line {n}: {e:#}"),
                    None => format!("{e:#}"),
                }));
            }
        }
        state
            .validate(u32::MAX, u32::MAX)
            .map_err(|e| refused(format!("{e:#}")))?;
        let body = json!({ "generation": generation, "state": state });
        match c.client.put("/v1/state", &body) {
            Ok(_) => return Ok(()),
            Err(ApiError::Status(StatusCode::CONFLICT, _)) if attempt == 1 => continue,
            Err(ApiError::Status(StatusCode::CONFLICT, m)) => {
                return Err(refused(format!(
                    "the state changed under us twice (generation conflict), nothing applied: {m}"
                )));
            }
            Err(e) => return Err(api_error(c, e)),
        }
    }
}

fn restore(c: &Ctx, text: &str, replace: bool) -> Res {
    let (numbered, warnings) =
        ops::parse_save_numbered(text, c.strict).map_err(|e| usage(format!("{e:#}")))?;
    warn_all(&warnings);
    let mut lines = Vec::new();
    let mut list = Vec::new();
    if replace {
        lines.push(0);
        list.push(Op::Clear);
    }
    for (n, op) in numbered {
        lines.push(n);
        list.push(op);
    }
    if list.is_empty() {
        return Ok(());
    }
    mutate(c, &list, Some(&lines))
}

fn save(c: &Ctx) -> Res {
    let (_, state) = get_state(c)?;
    write_out(&ops::format_save(&state));
    Ok(())
}

fn zero(c: &Ctx, svc: Option<ServiceId>) -> Res {
    c.client
        .post("/v1/zero", &json!({ "service": svc }))
        .map_err(|e| api_error(c, e))?;
    Ok(())
}

fn list(c: &Ctx, req: ListRequest) -> Res {
    if req.format == ListFormat::Conns {
        let v = c.client.get("/v1/conns").map_err(|e| match e {
            ApiError::Status(StatusCode::NOT_FOUND, _) => refused(
                "this daemon does not serve its connection table (GET /v1/conns): -c is not available",
            ),
            e => api_error(c, e),
        })?;
        let answer: ConnsAnswer =
            serde_json::from_value(v).map_err(|e| bad_answer("GET /v1/conns", e))?;
        // Expiry = idle timeout − idle time, when the daemon says what its timeout is.
        let timeout = c
            .client
            .get("/v1/status")
            .ok()
            .and_then(|v| v.get("conn_timeout").and_then(Value::as_u64));
        let conns: Vec<ConnEntry> = answer
            .conns
            .into_iter()
            .map(|d| ConnEntry {
                proto: d.proto,
                client: d.client,
                vip: d.vip,
                // DR and tunnels keep the destination port.
                backend: d.backend.map(|b| SocketAddr::new(b, d.vip.port())),
                state: d.state.unwrap_or_else(|| {
                    match (d.proto, d.established) {
                        (Proto::Udp, _) => "UDP",
                        (Proto::Tcp, true) => "ESTABLISHED",
                        (Proto::Tcp, false) => "SYN_RECV",
                    }
                    .to_string()
                }),
                expires: d
                    .expires_secs
                    .or_else(|| timeout.map(|t| t.saturating_sub(d.idle_secs)))
                    .map(|e| u32::try_from(e).unwrap_or(u32::MAX)),
            })
            .collect();
        write_out(&ops::format_conns(&conns));
        return Ok(());
    }
    let (_, state) = get_state(c)?;
    let mut opts = req.options;
    if let Some(id) = opts.service
        && !state.services.iter().any(|s| s.id() == id)
    {
        return Err(refused(format!("No such service {id}")));
    }
    if opts.service.is_none() {
        // ipvsadm's size= is its connection table's: ours is the daemon's capacity.
        if let Some(n) = c
            .client
            .get("/v1/status")
            .ok()
            .and_then(|v| v.get("conn_capacity").and_then(Value::as_u64))
        {
            opts.table_size = u32::try_from(n).unwrap_or(u32::MAX);
        }
    }
    let out = match req.format {
        ListFormat::Plain => ops::format_list(&state, &get_stats(c)?, &opts),
        ListFormat::Stats => ops::format_stats(&state, &get_stats(c)?, &opts),
        ListFormat::Rate => {
            let before = get_stats(c)?;
            let t = Instant::now();
            std::thread::sleep(Duration::from_secs(1));
            let after = get_stats(c)?;
            ops::format_rate(&state, &before, &after, t.elapsed().as_secs_f64(), &opts)
        }
        ListFormat::Conns => unreachable!("handled above"),
    };
    write_out(&out);
    Ok(())
}

/// `GET /v1/conns` as the daemon answers it.
#[derive(Deserialize)]
struct ConnsAnswer {
    conns: Vec<DaemonConn>,
}

#[derive(Deserialize)]
struct DaemonConn {
    proto: Proto,
    client: SocketAddr,
    vip: SocketAddr,
    #[serde(default)]
    backend: Option<IpAddr>,
    /// The client's ACK was seen, and no FIN or RST since.
    #[serde(default)]
    established: bool,
    /// SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE, UDP (older daemons: absent).
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    idle_secs: u64,
    /// Older daemons: absent (then conn_timeout − idle_secs).
    #[serde(default)]
    expires_secs: Option<u64>,
}

fn stats(c: &Ctx, exact: bool) -> Res {
    let (_, state) = get_state(c)?;
    let view = get_stats(c)?;
    let opts = ListOptions {
        exact,
        ..Default::default()
    };
    let mut out = ops::format_stats(&state, &view, &opts);
    if !view.reasons.is_empty() {
        out.push_str("\nAction Reason                 Count\n");
        for (action, reason, n) in &view.reasons {
            out.push_str(&format!("{action:<6} {reason:<22} {n}\n"));
        }
    }
    write_out(&out);
    Ok(())
}

/// `lbctl events`: the daemon's recent health transitions, oldest first.
fn events(c: &Ctx, limit: usize) -> Res {
    let v = c
        .client
        .get(&format!("/v1/events?limit={limit}"))
        .map_err(|e| match e {
            ApiError::Status(StatusCode::NOT_FOUND, _) => {
                refused("this daemon has no health events (GET /v1/events)")
            }
            e => api_error(c, e),
        })?;
    let list = v
        .get("events")
        .and_then(Value::as_array)
        .ok_or_else(|| bad_answer("GET /v1/events", "no events list"))?;
    let field = |e: &Value, k: &str| match e.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_string(),
        Some(other) => other.to_string(),
    };
    let mut out = format!(
        "{:<24} {:<24} {:<16} {:<9}    {:<9} {}\n",
        "TIME", "SERVICE", "BACKEND", "OLD", "NEW", "REASON"
    );
    for e in list {
        out.push_str(&format!(
            "{:<24} {:<24} {:<16} {:<9} -> {:<9} {}\n",
            field(e, "time"),
            field(e, "service"),
            field(e, "backend"),
            field(e, "old"),
            field(e, "new"),
            field(e, "reason"),
        ));
    }
    write_out(&out);
    Ok(())
}

fn status(c: &Ctx) -> Res {
    let v = c.client.get("/v1/status").map_err(|e| api_error(c, e))?;
    let Value::Object(m) = v else {
        return Err(bad_answer("GET /v1/status", "not an object"));
    };
    let mut out = String::new();
    for (k, v) in &m {
        let shown = match v {
            Value::String(s) => s.clone(),
            Value::Array(a) if k == "interfaces" => a
                .iter()
                .map(|i| {
                    let name = i.get("name").and_then(Value::as_str).unwrap_or("?");
                    match i.get("mode").and_then(Value::as_str) {
                        Some(mode) => format!("{name} ({mode})"),
                        None => name.to_string(),
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
            other => other.to_string(),
        };
        out.push_str(&format!("{k:<14} {shown}\n"));
    }
    write_out(&out);
    Ok(())
}

fn route(c: &Ctx, client: &str, vip: &str, proto: Proto) -> Res {
    let sock = |what: &str, s: &str| -> Res<String> {
        match parse_addr_port(s) {
            Ok((a, Some(p))) => Ok(ops::addr_port(a, p)),
            Ok((_, None)) => Err(usage(format!("{what} {s:?}: needs a port (address:port)"))),
            Err(e) => Err(usage(format!("{what}: {e:#}"))),
        }
    };
    let client = sock("CLIENT:PORT", client)?;
    let vip = sock("VIP:PORT", vip)?;
    let path = format!(
        "/v1/route?client={}&vip={}&proto={proto}",
        query_escape(&client),
        query_escape(&vip)
    );
    let v = c.client.get(&path).map_err(|e| api_error(c, e))?;
    let backend = match v.get("backend") {
        Some(Value::String(b)) => b.clone(),
        Some(Value::Null) | None => "none".to_string(),
        Some(other) => other.to_string(),
    };
    let why = v.get("why").and_then(Value::as_str).unwrap_or("");
    write_out(&format!(
        "{proto} {client} -> {vip}\nbackend: {backend}\nwhy: {why}\n"
    ));
    Ok(())
}
