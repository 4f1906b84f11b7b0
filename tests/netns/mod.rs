//! Test support: three hosts in their own network namespaces, `it` <-> `gw` <-> `ot`, made and
//! removed by the test, so a gateway can be run in `gw` between real (namespaced) IT and OT
//! networks. Needs root and `ip` (iproute2).
//!
//! ```text
//!   it  eth0 10.77.<n>.2/24    <->  it0 10.77.<n>.1/24    gw
//!   gw  ot0  10.77.<n+1>.1/24  <->  eth0 10.77.<n+1>.2/24  ot
//! ```
//!
//! and the same in IPv6 with `fd77:<n>::/64` and `fd77:<n+1>::/64` (`<n>` in hex there, as
//! `Ipv6Addr` prints it). `gw` forwards both families; `it` and `ot` each route the other's
//! subnet via `gw`. Loopback is up in all three.
//!
//! Use it from an integration test file as `mod netns;`.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Process-wide counter: makes namespace names unique per topology inside one test binary
/// (the pid makes them unique across test binaries running at the same time).
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Held (flock) around `ip netns add`: the first `ip netns add` on a machine sets up the
/// `/run/netns` mount, and concurrent first calls can stack two mounts and hide namespaces.
const LOCK_FILE: &str = "/run/lock/ztgate-netns-test.lock";

/// A network namespace made by a [`Topology`]; it is removed when the topology is dropped.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

/// Three hosts in their own network namespaces, made and removed by the test (see the module
/// documentation for the layout). Dropping it deletes the three namespaces, also while a test
/// panics; processes still running inside (spawned with [`Netns::command`]) and sockets made
/// inside keep the (then nameless) namespace alive until they end, so kill your children.
/// Traffic through `gw` stops once its namespace is gone (its veths go with it).
#[derive(Debug)]
pub struct Topology {
    pub it: Netns,
    pub gw: Netns,
    pub ot: Netns,
    /// `it`'s address on the IT subnet, 10.77.<n>.2.
    pub it_addr: Ipv4Addr,
    /// `gw`'s address on the IT subnet ("it0"), 10.77.<n>.1.
    pub gw_it_addr: Ipv4Addr,
    /// `gw`'s address on the OT subnet ("ot0"), 10.77.<n+1>.1.
    pub gw_ot_addr: Ipv4Addr,
    /// `ot`'s address on the OT subnet, 10.77.<n+1>.2.
    pub ot_addr: Ipv4Addr,
    /// fd77:<n>::2
    pub it_addr6: Ipv6Addr,
    /// fd77:<n>::1
    pub gw_it_addr6: Ipv6Addr,
    /// fd77:<n+1>::1
    pub gw_ot_addr6: Ipv6Addr,
    /// fd77:<n+1>::2
    pub ot_addr6: Ipv6Addr,
}

impl Topology {
    /// Makes the three namespaces and wires them, and returns once `it` reaches `ot` through
    /// `gw` in both IPv4 and IPv6 (a probe from `it` to port 9 on `ot` is refused). Panics with
    /// a clear message when not run as root, when `ip` is missing, or when any step fails
    /// (whatever was made is removed).
    pub fn new() -> Topology {
        check_prerequisites();

        let k = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Addresses only need to be unique inside the (isolated) topology; varying them a
        // little just makes logs of concurrent tests easier to tell apart. n is odd, 1..=253.
        let n = (1 + 2 * ((pid.wrapping_add(k)) % 127)) as u8;
        let prefix = format!("ztg-{pid}-{k}");

        // Removes whatever was made if a later step panics, until the Topology owns the names.
        let mut guard = Cleanup(Vec::new());
        let mut make = |role: &str| -> Netns {
            let name = format!("{prefix}-{role}");
            create_netns(&name);
            guard.0.push(name.clone());
            Netns { name }
        };
        let it = make("it");
        let gw = make("gw");
        let ot = make("ot");
        guard.0.clear(); // From here on, Topology's Drop removes them.

        let v4 = |net: u8, host: u8| Ipv4Addr::new(10, 77, net, host);
        let v6 = |net: u8, host: u16| Ipv6Addr::new(0xfd77, u16::from(net), 0, 0, 0, 0, 0, host);
        let topo = Topology {
            it,
            gw,
            ot,
            it_addr: v4(n, 2),
            gw_it_addr: v4(n, 1),
            gw_ot_addr: v4(n + 1, 1),
            ot_addr: v4(n + 1, 2),
            it_addr6: v6(n, 2),
            gw_it_addr6: v6(n, 1),
            gw_ot_addr6: v6(n + 1, 1),
            ot_addr6: v6(n + 1, 2),
        };
        topo.wire();
        topo
    }

    fn wire(&self) {
        let (it, gw, ot) = (&self.it, &self.gw, &self.ot);
        for ns in [it, gw, ot] {
            // No duplicate address detection at all (link-local addresses included), so every
            // address is usable at once.
            ns.write_sysctl("net/ipv6/conf/all/accept_dad", "0");
            ns.write_sysctl("net/ipv6/conf/default/accept_dad", "0");
            ns.write_sysctl("net/ipv6/conf/all/disable_ipv6", "0");
            ns.write_sysctl("net/ipv6/conf/default/disable_ipv6", "0");
            ns.ip(&["link", "set", "lo", "up"]);
        }
        gw.write_sysctl("net/ipv4/ip_forward", "1");
        gw.write_sysctl("net/ipv6/conf/all/forwarding", "1");

        // The veths are made directly inside the namespaces: nothing appears in the root one.
        gw.ip(&[
            "link", "add", "name", "it0", "type", "veth", "peer", "name", "eth0", "netns", &it.name,
        ]);
        gw.ip(&[
            "link", "add", "name", "ot0", "type", "veth", "peer", "name", "eth0", "netns", &ot.name,
        ]);

        let cidr4 = |a: Ipv4Addr| format!("{a}/24");
        let cidr6 = |a: Ipv6Addr| format!("{a}/64");
        let links: [(&Netns, &str, Ipv4Addr, Ipv6Addr); 4] = [
            (it, "eth0", self.it_addr, self.it_addr6),
            (gw, "it0", self.gw_it_addr, self.gw_it_addr6),
            (gw, "ot0", self.gw_ot_addr, self.gw_ot_addr6),
            (ot, "eth0", self.ot_addr, self.ot_addr6),
        ];
        // Links up first, then addresses: IPv6 addresses added to a down link get their prefix
        // route only some time after the link comes up, and the first packets are lost.
        for (ns, dev, _, _) in links {
            ns.ip(&["link", "set", dev, "up"]);
        }
        for (ns, dev, a4, a6) in links {
            ns.ip(&["addr", "add", &cidr4(a4), "dev", dev]);
            ns.ip(&["-6", "addr", "add", &cidr6(a6), "dev", dev, "nodad"]);
        }

        let net4 = |a: Ipv4Addr| {
            let o = a.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        };
        let net6 = |a: Ipv6Addr| {
            let s = a.segments();
            format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        };
        it.ip(&[
            "route",
            "add",
            &net4(self.ot_addr),
            "via",
            &self.gw_it_addr.to_string(),
        ]);
        ot.ip(&[
            "route",
            "add",
            &net4(self.it_addr),
            "via",
            &self.gw_ot_addr.to_string(),
        ]);
        it.ip(&[
            "-6",
            "route",
            "add",
            &net6(self.ot_addr6),
            "via",
            &self.gw_it_addr6.to_string(),
        ]);
        ot.ip(&[
            "-6",
            "route",
            "add",
            &net6(self.it_addr6),
            "via",
            &self.gw_ot_addr6.to_string(),
        ]);

        self.wait_until_routed(IpAddr::V4(self.ot_addr));
        self.wait_until_routed(IpAddr::V6(self.ot_addr6));
    }

    /// Readiness check (and neighbour-cache warm-up): a connection from `it` to a closed port on
    /// `ot` must be refused, i.e. the SYN went through `gw` and ot's RST came back. Bounded:
    /// at most `PROBES` attempts of `PROBE_TIMEOUT` each; panics if the path never works.
    fn wait_until_routed(&self, ot_ip: IpAddr) {
        const PROBES: u32 = 20;
        const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
        // Nothing listens in a namespace made a moment ago.
        let target = SocketAddr::new(ot_ip, 9);
        let mut last = None;
        for _ in 0..PROBES {
            match self.it.connect(target, PROBE_TIMEOUT) {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return,
                Ok(_) => panic!("netns test harness: unexpected listener on {target} in ot"),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "netns test harness: it ({}) cannot reach {target} in ot through gw after {PROBES} \
             probes: last error {last:?}",
            self.it.name
        );
    }

    /// The three namespaces, `it`, `gw`, `ot`.
    pub fn namespaces(&self) -> [&Netns; 3] {
        [&self.it, &self.gw, &self.ot]
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Never panics (a panic while unwinding would abort the test binary).
        for ns in [&self.ot, &self.gw, &self.it] {
            delete_netns(&ns.name);
        }
    }
}

impl Netns {
    /// `ip netns exec <name> <program>`: a Command to spawn inside the namespace (add the
    /// program's arguments to it).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec"]).arg(&self.name).arg(program);
        cmd
    }

    /// Runs `program args` inside the namespace; panics with its stderr if it cannot be started
    /// or fails. Returns its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let output = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "netns {}: cannot run `{program} {}`: {e}",
                    self.name,
                    args.join(" ")
                )
            });
        check_output(
            &format!("netns {}: `{program} {}`", self.name, args.join(" ")),
            &output,
        )
    }

    /// `ip -n <name> <args>`: panics with stderr on failure, returns stdout.
    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full)
    }

    /// Path of the namespace's handle (the bind mount `ip netns add` made).
    pub fn path(&self) -> PathBuf {
        netns_path(&self.name)
    }

    /// Runs `f` on a freshly spawned thread that has entered this namespace with setns(2),
    /// and returns what it returns (`f` may borrow from the caller). Sockets made in `f` stay
    /// in this namespace after the thread ends. Only the new thread changes namespace, never
    /// the caller's. It blocks the caller until `f` returns: from async code, use
    /// `spawn_blocking`, and turn the std sockets into tokio ones with `set_nonblocking(true)`
    /// and `tokio::net::TcpStream::from_std` / `TcpListener::from_std`.
    pub fn enter<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send,
        F: FnOnce() -> io::Result<T> + Send,
    {
        let path = self.path();
        let name = self.name.as_str();
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name(format!("netns-{name}"))
                .spawn_scoped(scope, || {
                    let file = File::open(&path).map_err(|e| {
                        let shown = path.display();
                        io::Error::new(e.kind(), format!("netns {name}: open {shown}: {e}"))
                    })?;
                    // SAFETY: plain syscall on a valid, open file descriptor; it changes the
                    // network namespace of this (short-lived, dedicated) thread only.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        let e = io::Error::last_os_error();
                        return Err(io::Error::new(
                            e.kind(),
                            format!("netns {name}: setns: {e}"),
                        ));
                    }
                    drop(file);
                    f()
                })?
                .join()
                .map_err(|_| io::Error::other(format!("netns {name}: thread panicked")))?
        })
    }

    /// A TCP connection made from inside this namespace, with a connect timeout. Err on
    /// timeout, refusal, unreachable network, ...
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        self.enter(move || TcpStream::connect_timeout(&addr, timeout))
    }

    /// A TCP listener bound inside this namespace (port 0 picks a free port: see `local_addr`).
    pub fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        self.enter(move || TcpListener::bind(addr))
    }

    /// Writes `/proc/sys/<key>` (key with slashes, e.g. `net/ipv4/ip_forward`) as seen from
    /// inside this namespace. Panics on failure.
    pub fn write_sysctl(&self, key: &str, value: &str) {
        let path = Path::new("/proc/sys").join(key);
        self.enter(|| std::fs::write(&path, value))
            .unwrap_or_else(|e| panic!("netns {}: write {}: {e}", self.name, path.display()));
    }

    /// Reads `/proc/sys/<key>` as seen from inside this namespace (trimmed). Panics on failure.
    pub fn read_sysctl(&self, key: &str) -> String {
        let path = Path::new("/proc/sys").join(key);
        self.enter(|| std::fs::read_to_string(&path))
            .unwrap_or_else(|e| panic!("netns {}: read {}: {e}", self.name, path.display()))
            .trim()
            .to_owned()
    }
}

/// Whether a namespace called `name` currently exists (per `ip netns list`).
pub fn netns_exists(name: &str) -> bool {
    run_ip(&["netns", "list"])
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .any(|n| n == name)
}

fn netns_path(name: &str) -> PathBuf {
    let run = Path::new("/run/netns").join(name);
    if run.exists() {
        return run;
    }
    let var_run = Path::new("/var/run/netns").join(name);
    if var_run.exists() { var_run } else { run }
}

fn check_prerequisites() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "netns test harness: must run as root (euid is {euid}): network namespaces, veths and \
         sysctls need CAP_SYS_ADMIN/CAP_NET_ADMIN"
    );
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "netns test harness: `ip -V` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "netns test harness: cannot run `ip` ({e}); install iproute2 (apt-get install iproute2)"
        ),
    }
}

fn create_netns(name: &str) {
    let _lock = FileLock::acquire(LOCK_FILE);
    // A stale namespace of the same name (a crashed earlier run with the same pid) goes first.
    if netns_exists(name) || netns_path(name).exists() {
        delete_netns(name);
    }
    run_ip(&["netns", "add", name]);
}

/// `ip netns del <name>`; never panics, reports failures on stderr.
fn delete_netns(name: &str) {
    match Command::new("ip").args(["netns", "del", name]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "netns test harness: `ip netns del {name}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("netns test harness: cannot run `ip netns del {name}`: {e}"),
    }
}

fn run_ip(args: &[&str]) -> String {
    let what = format!("`ip {}`", args.join(" "));
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("netns test harness: cannot run {what}: {e}"));
    check_output(&what, &output)
}

fn check_output(what: &str, output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        panic!(
            "{what} failed ({}):\nstderr: {}\nstdout: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            stdout.trim()
        );
    }
    stdout
}

/// Deletes the namespaces it names when dropped (used while a topology is half made).
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in self.0.iter().rev() {
            delete_netns(name);
        }
    }
}

/// An exclusive flock(2), released when dropped (closing the file releases it). Best effort:
/// if the lock file cannot be opened, goes on without it.
struct FileLock(Option<File>);

impl FileLock {
    fn acquire(path: &str) -> FileLock {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .or_else(|_| {
                let tmp = std::env::temp_dir().join("ztgate-netns-test.lock");
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(tmp)
            });
        let Ok(file) = file else {
            return FileLock(None);
        };
        // SAFETY: valid open descriptor; blocks until the lock is free (held only for the
        // duration of one `ip netns add`).
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        FileLock(if rc == 0 { Some(file) } else { None })
    }
}
