//! A cluster in network namespaces on this machine, for network fault tests: every etcd
//! member, server and agent in its own namespace with one veth to a bridge in a "switch"
//! namespace, so each link can be cut or made lossy on its own (`iptables … -j DROP` in the
//! switch's FORWARD chain: silent, no reset or ICMP, as a real partition). Latency comes from a
//! [`DelayRelay`] in the test process (the machine's kernel may lack `sch_netem`, so `tc netem`
//! is not relied on). The test process reaches every node through a veth of its own in the root
//! namespace (10.77.K.2), so it uses the SDK client directly.
//! Nothing leaves the machine: the switch has no uplink. Dropping a [`Cluster`] kills its
//! processes and deletes its namespaces and links.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use croupier_sdk::{Client, TlsFiles};

use super::testbed::{must, run};
use super::{Proc, bin};

/// Checks once that namespaces, veths, iptables (with its `statistic` match) and etcd work
/// here (root, iproute2, iptables, etcd-server).
pub fn tools() -> Result<(), String> {
    static CHECKED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    CHECKED.get_or_init(check_tools).clone()
}

fn check_tools() -> Result<(), String> {
    for (cmd, args) in [
        ("ip", &["netns", "list"][..]),
        ("iptables", &["-V"]),
        ("etcd", &["--version"]),
        ("etcdctl", &["version"]),
    ] {
        let (ok, _, err) = run(cmd, args);
        if !ok {
            return Err(format!("{cmd} {args:?}: {err}"));
        }
    }
    let probe = format!("cbt-{}-probe", std::process::id());
    let (ok, _, err) = run("ip", &["netns", "add", &probe]);
    if !ok {
        return Err(format!("ip netns add: {err}"));
    }
    let (ok, _, err) = run(
        "ip",
        &[
            "netns",
            "exec",
            &probe,
            "iptables",
            "-A",
            "INPUT",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            "0.05",
            "-j",
            "DROP",
        ],
    );
    run("ip", &["netns", "del", &probe]);
    if !ok {
        return Err(format!("iptables -m statistic: {err}"));
    }
    Ok(())
}

/// Deletes namespaces and root links left by test processes that no longer run.
fn sweep_stale() {
    let (_, list, _) = run("ip", &["netns", "list"]);
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name.strip_prefix("cbt-").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            run("ip", &["netns", "del", name]);
        }
    }
}

/// One process's place: its namespace and address.
#[derive(Clone, Debug)]
pub struct Node {
    /// Role name (e0, sa, a1…).
    pub name: String,
    /// Namespace name.
    pub ns: String,
    /// Its address on the bridge.
    pub ip: String,
    /// The switch-side end of its veth.
    pub port: String,
}

/// The namespaces of one test, with the processes started in them.
pub struct Cluster {
    /// Scratch dir: certificates, data dirs, logs.
    pub dir: tempfile::TempDir,
    sw: String,
    root_link: String,
    root_ip: String,
    /// Every node by role name.
    pub nodes: Vec<Node>,
    /// Running processes by role name (killed first when dropped).
    pub procs: Vec<(String, Proc)>,
}

impl Cluster {
    /// Makes the switch, the root link (10.77.K.2) and one namespace per role, e.g.
    /// `["e0", "e1", "e2", "sa", "sb", "a1", "a2"]`, addresses 10.77.K.10 upwards; writes
    /// certificates for agents `a*` and every node address.
    pub fn new(k: u8, roles: &[&str]) -> Cluster {
        sweep_stale();
        let pid = std::process::id();
        let sw = format!("cbt-{pid}-{k}-sw");
        must("ip", &["netns", "add", &sw]);
        let mut c = Cluster {
            dir: tempfile::tempdir().unwrap(),
            sw: sw.clone(),
            root_link: format!("cbc{pid}{k}"),
            root_ip: format!("10.77.{k}.2"),
            nodes: Vec::new(),
            procs: Vec::new(),
        };
        c.sw(&["ip", "link", "add", "br0", "type", "bridge"]);
        c.sw(&["ip", "link", "set", "br0", "up"]);
        c.sw(&["ip", "link", "set", "lo", "up"]);
        // Bridged packets go through the switch's iptables FORWARD chain: that is where links
        // are cut or made lossy.
        c.sw(&[
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables",
        ]);
        // The root namespace's link: the test process talks to every node through it.
        let peer = format!("cb{pid}{k}r");
        must(
            "ip",
            &[
                "link",
                "add",
                &c.root_link,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ],
        );
        must("ip", &["link", "set", &peer, "netns", &sw]);
        c.sw(&["ip", "link", "set", &peer, "master", "br0", "up"]);
        let subnet_ip = format!("10.77.{k}.2/24");
        must("ip", &["addr", "add", &subnet_ip, "dev", &c.root_link]);
        must("ip", &["link", "set", &c.root_link, "up"]);
        for (i, role) in roles.iter().enumerate() {
            let ns = format!("cbt-{pid}-{k}-{role}");
            let ip = format!("10.77.{k}.{}", 10 + i);
            let (inner, port) = (format!("cb{pid}{k}{i}a"), format!("cb{pid}{k}{i}b"));
            must("ip", &["netns", "add", &ns]);
            must(
                "ip",
                &["link", "add", &inner, "type", "veth", "peer", "name", &port],
            );
            must("ip", &["link", "set", &inner, "netns", &ns]);
            must("ip", &["link", "set", &port, "netns", &sw]);
            c.sw(&["ip", "link", "set", &port, "master", "br0", "up"]);
            let node = Node {
                name: role.to_string(),
                ns,
                ip: ip.clone(),
                port,
            };
            c.exec(&node, &["ip", "link", "set", &inner, "name", "eth0"]);
            c.exec(
                &node,
                &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            );
            c.exec(&node, &["ip", "link", "set", "eth0", "up"]);
            c.exec(&node, &["ip", "link", "set", "lo", "up"]);
            c.nodes.push(node);
        }
        let mut args = vec!["--client", "c1", "--admin", "ops"];
        for role in roles.iter().filter(|r| r.starts_with('a')) {
            args.extend(["--agent", role]);
        }
        let mut ips: Vec<String> = c.nodes.iter().map(|n| n.ip.clone()).collect();
        ips.push(c.root_ip.clone());
        for ip in &ips {
            args.extend(["--host", ip]);
        }
        super::certs_cmd(&c.certs(), "init", &args);
        c
    }

    fn sw(&self, cmd: &[&str]) {
        let mut args = vec!["netns", "exec", &self.sw];
        args.extend(cmd);
        must("ip", &args);
    }

    /// Runs `cmd` in `node`'s namespace; it must succeed.
    pub fn exec(&self, node: &Node, cmd: &[&str]) {
        let mut args = vec!["netns", "exec", &node.ns];
        args.extend(cmd);
        must("ip", &args);
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
            .clone()
    }

    /// The certificates' directory.
    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// The log file of process `name`.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    fn spawn(&mut self, node: &Node, name: &str, args: &[&str], piped: bool) -> Proc {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node.ns])
            .args(args)
            .env("CROUPIER_LOG", "info")
            .stdout(if piped { Stdio::piped() } else { Stdio::null() })
            .stderr(log);
        Proc {
            child: cmd.spawn().expect("ip netns exec"),
            name: name.to_string(),
        }
    }

    /// The etcd members' client URLs.
    pub fn etcd_endpoints(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.name.starts_with('e'))
            .map(|n| format!("http://{}:2379", n.ip))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts (or restarts, on its data dir) etcd member `name`.
    pub fn start_etcd(&mut self, name: &str) {
        let node = self.node(name);
        let cluster = self
            .nodes
            .iter()
            .filter(|n| n.name.starts_with('e'))
            .map(|n| format!("{}=http://{}:2380", n.name, n.ip))
            .collect::<Vec<_>>()
            .join(",");
        let data = self.dir.path().join(format!("etcd-{name}"));
        let (client, peer) = (
            format!("http://{}:2379", node.ip),
            format!("http://{}:2380", node.ip),
        );
        let proc = self.spawn(
            &node,
            name,
            &[
                "etcd",
                "--name",
                name,
                "--data-dir",
                data.to_str().unwrap(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "croupier-netfaults",
            ],
            false,
        );
        self.procs.push((name.to_string(), proc));
    }

    /// Waits until etcd answers a write through `endpoints` (at most `timeout`).
    pub fn wait_etcd(&self, timeout: Duration) {
        let start = std::time::Instant::now();
        let endpoints = self.etcd_endpoints();
        loop {
            let (ok, _, err) = run(
                "etcdctl",
                &[
                    "--endpoints",
                    &endpoints,
                    "--command-timeout=2s",
                    "put",
                    "/bed",
                    "ok",
                ],
            );
            if ok {
                return;
            }
            assert!(start.elapsed() < timeout, "etcd did not come up: {err}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts server `name` (id = name) on etcd with heartbeat interval `heartbeat`; returns
    /// its URL.
    pub fn start_server(&mut self, name: &str, heartbeat: Duration, extra: &[&str]) -> String {
        let node = self.node(name);
        let listen = format!("{}:8443", node.ip);
        let http = format!("{}:9464", node.ip);
        let url = format!("https://{listen}");
        let data = self.dir.path().join(format!("data-{name}"));
        let (certs, endpoints) = (self.certs(), self.etcd_endpoints());
        let hb = format!("{}ms", heartbeat.as_millis());
        let bin = bin();
        let mut args = vec![
            bin.as_str(),
            "server",
            "--listen",
            &listen,
            "--http-listen",
            &http,
            "--server-id",
            name,
            "--advertise-url",
            &url,
            "--data-dir",
            data.to_str().unwrap(),
            "--tls-dir",
            certs.to_str().unwrap(),
            "--heartbeat-interval",
            &hb,
            "--shutdown-grace",
            "2s",
            "--store",
            "etcd",
            "--etcd-endpoints",
            &endpoints,
        ];
        args.extend(extra);
        let mut proc = self.spawn(&node, name, &args, true);
        let lines = croupier::child::lines(proc.child.stdout.take().unwrap());
        croupier::child::server_urls(&lines, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("server {name} did not start: {}", self.log(name)));
        self.procs.push((name.to_string(), proc));
        url
    }

    /// Starts agent `name` (game g, env e) dialing `servers` (role names, failover order).
    pub fn start_agent(&mut self, name: &str, servers: &[&str]) {
        let urls = servers
            .iter()
            .map(|s| format!("https://{}:8443", self.node(s).ip))
            .collect::<Vec<_>>()
            .join(",");
        self.start_agent_urls(name, &urls);
    }

    /// Starts agent `name` (game g, env e) dialing `urls` (comma-separated).
    pub fn start_agent_urls(&mut self, name: &str, urls: &str) {
        let node = self.node(name);
        let certs = self.certs();
        let bin = bin();
        let args = [
            bin.as_str(),
            "agent",
            "--server",
            urls,
            "--id",
            name,
            "--game-id",
            "g",
            "--env",
            "e",
            "--tls-dir",
            certs.to_str().unwrap(),
        ];
        let proc = self.spawn(&node, name, &args, false);
        self.procs.push((name.to_string(), proc));
    }

    /// Kills process `name` (SIGKILL) and waits for it.
    pub fn kill(&mut self, name: &str) {
        let i = self
            .procs
            .iter()
            .position(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no process {name}"));
        let (_, mut proc) = self.procs.remove(i);
        proc.signal(9);
        proc.wait_exit(Duration::from_secs(10));
    }

    /// A client (certificate `stem`) of server `name`.
    pub async fn client(&self, name: &str, stem: &str) -> Client {
        let url = format!("https://{}:8443", self.node(name).ip);
        Client::connect(&url, &TlsFiles::from_dir(&self.certs(), stem))
            .await
            .expect("client connects")
    }

    /// Cuts the link between `a` and `b` both ways: the switch drops what goes between them,
    /// silently (no reset, no ICMP), as a partition does.
    pub fn cut(&self, a: &str, b: &str) {
        self.forward_rule("-I", a, b, &[]);
        self.forward_rule("-I", b, a, &[]);
    }

    /// Heals a link cut with [`Cluster::cut`].
    pub fn heal(&self, a: &str, b: &str) {
        self.forward_rule("-D", a, b, &[]);
        self.forward_rule("-D", b, a, &[]);
    }

    /// Makes the switch drop `percent` % of the packets between `a` and `b`, each way, at
    /// random ("root" names the test process's link). `heal_loss` undoes it.
    pub fn lossy(&self, a: &str, b: &str, percent: u32) {
        let p = format!("{:.2}", f64::from(percent) / 100.0);
        let m = [
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            p.as_str(),
        ];
        self.forward_rule("-I", a, b, &m);
        self.forward_rule("-I", b, a, &m);
    }

    /// Undoes [`Cluster::lossy`] with the same arguments.
    pub fn heal_loss(&self, a: &str, b: &str, percent: u32) {
        let p = format!("{:.2}", f64::from(percent) / 100.0);
        let m = [
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            p.as_str(),
        ];
        self.forward_rule("-D", a, b, &m);
        self.forward_rule("-D", b, a, &m);
    }

    fn ip_of(&self, name: &str) -> String {
        if name == "root" {
            self.root_ip.clone()
        } else {
            self.node(name).ip
        }
    }

    /// The address of the test process's own link (where a [`DelayRelay`] listens).
    pub fn root_ip(&self) -> String {
        self.root_ip.clone()
    }

    fn forward_rule(&self, op: &str, from: &str, to: &str, matches: &[&str]) {
        let (src, dst) = (self.ip_of(from), self.ip_of(to));
        let mut cmd = vec!["iptables", op, "FORWARD", "-s", &src, "-d", &dst];
        cmd.extend(matches);
        cmd.extend(["-j", "DROP"]);
        self.sw(&cmd);
    }
}

/// A TCP relay in the test process: listens on `listen` and passes every chunk on to
/// `upstream` `delay` later, both ways, in order. It adds latency where the kernel has no
/// `sch_netem` (TCP's own acknowledgements still travel at the link's speed). Stops accepting
/// and closes its connections when dropped.
pub struct DelayRelay {
    /// The port it listens on.
    pub port: u16,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl DelayRelay {
    /// Starts a relay on `listen_ip` (port chosen by the OS) to `upstream` (`host:port`).
    pub fn start(listen_ip: &str, upstream: &str, delay: Duration) -> DelayRelay {
        let listener = TcpListener::bind((listen_ip, 0)).expect("relay bind");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (stop2, conns2, upstream) = (stop.clone(), conns.clone(), upstream.to_string());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let down = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(_) => break,
                };
                let Ok(up) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let _ = down.set_nonblocking(false);
                for s in [&down, &up] {
                    let _ = s.set_nodelay(true);
                    if let Ok(c) = s.try_clone() {
                        conns2.lock().unwrap().push(c);
                    }
                }
                pipe(down.try_clone().unwrap(), up.try_clone().unwrap(), delay);
                pipe(up, down, delay);
            }
        });
        DelayRelay { port, stop, conns }
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Cluster {
    /// Stops everything and checks that no namespace or link of this cluster is left.
    pub fn close(self) {
        let (prefix, link) = (
            self.sw.trim_end_matches("sw").to_string(),
            self.root_link.clone(),
        );
        drop(self);
        let (_, list, _) = run("ip", &["netns", "list"]);
        let left: Vec<&str> = list.lines().filter(|l| l.starts_with(&prefix)).collect();
        assert!(left.is_empty(), "namespaces left: {left:?}");
        let (exists, _, _) = run("ip", &["link", "show", &link]);
        assert!(!exists, "link {link} left");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.procs.clear();
        for node in &self.nodes {
            run("ip", &["netns", "del", &node.ns]);
        }
        run("ip", &["netns", "del", &self.sw]);
        run("ip", &["link", "del", &self.root_link]);
    }
}
