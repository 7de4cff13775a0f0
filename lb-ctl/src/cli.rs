//! The subcommand form (clap). The ipvsadm form (`lbctl -A -t …`) is parsed by
//! `lb_common::ops::parse_ipvsadm_args`, the same parser `restore` uses.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use lb_common::state::{Forward, Proto};

pub const DEFAULT_SOCKET: &str = "/run/lb/lb.sock";

const AFTER_HELP: &str = "\
ipvsadm form (when the first argument is an option):
  lbctl -A|-E -t|-u addr:port [-s mh|sh|rr|wrr] [-p [timeout]]
  lbctl -D -t|-u addr:port
  lbctl -a|-e -t|-u addr:port -r addr[:port] [-g|-i [--gue]] [-w weight]
  lbctl -d -t|-u addr:port -r addr[:port]
  lbctl -L|-l [-n] [-t|-u addr:port] [--stats|--rate|-c] [--exact] [--nosort]
  lbctl -Z [-t|-u addr:port]     lbctl -C     lbctl -S [-n]     lbctl -R < saved
  Defaults: scheduler mh, forwarding -g, weight 1, -p without a value = 300 s.
  ipvsadm's wlc/lc/sed/nq/dh/lblc/lblcr become mh with a warning (--strict refuses).
  -E/-e reset what is not given (scheduler mh, no persistence, weight 1), as ipvsadm
  does, except that -e without -g/-i keeps the forwarding method; the service/backend
  edit subcommands change only what is given.
  Refused, naming the flag: -m (NAT), -f (fwmark), -M, -x/-y (other than 0), -o,
  --pe, -b, sync daemon options. Migrate with: ipvsadm -S -n | lbctl -R

Exit status: 0 done; 1 refused (by the daemon, or as conflicting with its state);
2 usage error (bad flags or a bad line in restore input); 3 the daemon cannot be reached.";

#[derive(Parser, Debug)]
#[command(
    name = "lbctl",
    version,
    about = "Control the XDP load balancer (lb-daemon) — ipvsadm-compatible",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The daemon's unix socket.
    #[arg(long, global = true, env = "LBCTL_SOCKET", value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Talk to the daemon's TCP listener instead, e.g. http://10.0.0.5:9080.
    #[arg(long, global = true, env = "LBCTL_URL", value_name = "URL")]
    pub url: Option<String>,
    /// Bearer token for the TCP listener.
    #[arg(
        long,
        global = true,
        env = "LBCTL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Refuse ipvsadm schedulers we do not have (wlc, lc, …) instead of using mh.
    #[arg(long, global = true)]
    pub strict: bool,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Add, edit or delete a virtual service (ipvsadm -A, -E, -D).
    Service {
        #[command(subcommand)]
        cmd: ServiceCmd,
    },
    /// Add, edit, delete or drain a real server (ipvsadm -a, -e, -d; drain = weight 0).
    Backend {
        #[command(subcommand)]
        cmd: BackendCmd,
    },
    /// The table as `ipvsadm -L -n` prints it (ipvsadm -L).
    List(ListArgs),
    /// Counters per service and real server (ipvsadm -L -n --stats), then by reason.
    Stats(StatsArgs),
    /// Zero the counters, of all services or one (ipvsadm -Z).
    Zero(OptSvc),
    /// Print the table in ipvsadm-save format (ipvsadm -S -n).
    Save,
    /// Apply ipvsadm-save text from FILE or standard input, all or nothing (ipvsadm -R).
    Restore(RestoreArgs),
    /// Delete every service (ipvsadm -C).
    Clear,
    /// The daemon's version, interfaces and counts.
    Status,
    /// Recent health transitions: time, service, backend, old -> new state, reason.
    Events(EventsArgs),
    /// Which backend a flow goes to, and why.
    Route(RouteArgs),
    /// Stop the daemon.
    Shutdown {
        /// Also detach the XDP programs and remove the pinned maps (forwarding stops).
        #[arg(long)]
        unload: bool,
    },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProtoArg {
    Tcp,
    Udp,
}

impl From<ProtoArg> for Proto {
    fn from(p: ProtoArg) -> Proto {
        match p {
            ProtoArg::Tcp => Proto::Tcp,
            ProtoArg::Udp => Proto::Udp,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ForwardArg {
    /// Direct routing (ipvsadm -g).
    Dr,
    /// IPIP / IPv6-in-IPv6 tunnel (ipvsadm -i).
    Tun,
    /// GUE tunnel (ipvsadm -i --gue).
    Gue,
}

impl From<ForwardArg> for Forward {
    fn from(f: ForwardArg) -> Forward {
        match f {
            ForwardArg::Dr => Forward::Dr,
            ForwardArg::Tun => Forward::Tun,
            ForwardArg::Gue => Forward::Gue,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct Svc {
    /// The virtual service, address:port (IPv6 as [addr]:port; port 0 = every port).
    #[arg(value_name = "VIP:PORT")]
    pub service: String,
    #[arg(long, value_enum, default_value = "tcp")]
    pub proto: ProtoArg,
}

#[derive(Args, Debug, Clone)]
pub struct OptSvc {
    /// Only this service, address:port.
    #[arg(value_name = "VIP:PORT")]
    pub service: Option<String>,
    #[arg(long, value_enum, default_value = "tcp")]
    pub proto: ProtoArg,
}

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// Add a service (ipvsadm -A).
    Add {
        #[command(flatten)]
        svc: Svc,
        /// mh (Maglev, default), sh, rr, wrr; ipvsadm's wlc & co become mh (see --strict).
        #[arg(short, long, default_value = "mh")]
        scheduler: String,
        /// Persistence in seconds; without a value 300.
        #[arg(short, long, value_name = "SECS", num_args = 0..=1, default_missing_value = "300")]
        persistence: Option<u32>,
    },
    /// Change a service's scheduler or persistence; what is not given stays.
    #[command(group(ArgGroup::new("change").required(true).multiple(true).args(["scheduler", "persistence"])))]
    Edit {
        #[command(flatten)]
        svc: Svc,
        #[arg(short, long)]
        scheduler: Option<String>,
        /// Persistence in seconds (0 = off); without a value 300.
        #[arg(short, long, value_name = "SECS", num_args = 0..=1, default_missing_value = "300")]
        persistence: Option<u32>,
    },
    /// Delete a service and its real servers (ipvsadm -D).
    Del {
        #[command(flatten)]
        svc: Svc,
    },
}

#[derive(Subcommand, Debug)]
pub enum BackendCmd {
    /// Add a real server (ipvsadm -a).
    Add {
        #[command(flatten)]
        svc: Svc,
        /// The real server, address[:port] (the port, if given, must be the service's).
        #[arg(value_name = "REAL")]
        real: String,
        /// 0-65535; 0 = drained.
        #[arg(short, long, default_value_t = 1)]
        weight: u32,
        #[arg(short, long, value_enum, default_value = "dr")]
        forward: ForwardArg,
        /// L2 next hop (the server in DR, the router in tunnel mode); default: neighbour table.
        #[arg(long)]
        mac: Option<String>,
        /// UDP port of GUE on the real server.
        #[arg(long, default_value_t = lb_common::DEFAULT_GUE_PORT)]
        gue_port: u16,
    },
    /// Change a real server's weight or forwarding; what is not given stays.
    #[command(group(ArgGroup::new("change").required(true).multiple(true).args(["weight", "forward"])))]
    Edit {
        #[command(flatten)]
        svc: Svc,
        #[arg(value_name = "REAL")]
        real: String,
        #[arg(short, long)]
        weight: Option<u32>,
        #[arg(short, long, value_enum)]
        forward: Option<ForwardArg>,
    },
    /// Delete a real server (ipvsadm -d).
    Del {
        #[command(flatten)]
        svc: Svc,
        #[arg(value_name = "REAL")]
        real: String,
    },
    /// Weight 0: established flows stay on it, new flows go elsewhere.
    Drain {
        #[command(flatten)]
        svc: Svc,
        #[arg(value_name = "REAL")]
        real: String,
    },
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub svc: OptSvc,
    /// Numeric output (always; accepted for ipvsadm habits).
    #[arg(short, long)]
    pub numeric: bool,
    /// Counters instead of the configuration (--stats).
    #[arg(long, conflicts_with_all = ["rate", "connections"])]
    pub stats: bool,
    /// Rates over one second (--rate).
    #[arg(long, conflicts_with = "connections")]
    pub rate: bool,
    /// The connection table (-c).
    #[arg(short = 'c', long)]
    pub connections: bool,
    /// Every digit instead of K/M/G/T.
    #[arg(long)]
    pub exact: bool,
    /// Configuration order instead of ipvsadm's sorted order.
    #[arg(long)]
    pub nosort: bool,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// How many, the most recent (the daemon keeps the last 1024; its log has them all).
    #[arg(short = 'n', long, default_value_t = 50)]
    pub limit: usize,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Every digit instead of K/M/G/T.
    #[arg(long)]
    pub exact: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// ipvsadm-save text; standard input when absent or "-".
    pub file: Option<PathBuf>,
    /// Delete every service first (as if the input began with -C).
    #[arg(long)]
    pub replace: bool,
}

#[derive(Args, Debug)]
pub struct RouteArgs {
    /// The client's address:port.
    #[arg(value_name = "CLIENT:PORT")]
    pub client: String,
    /// The virtual service's address:port.
    #[arg(value_name = "VIP:PORT")]
    pub vip: String,
    #[arg(value_enum, default_value = "tcp")]
    pub proto: ProtoArg,
}
