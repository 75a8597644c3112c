//! Throwaway etcd processes (one member or a cluster) for the etcd backend's tests.

use std::time::Duration;

use tokio::time::Instant;

/// A throwaway single-member etcd (the `etcd` binary, e.g. Debian's `etcd-server`) on free
/// loopback ports with its data in a temp dir; killed when dropped.
pub struct EtcdProcess {
    child: std::process::Child,
    dir: std::path::PathBuf,
    args: Vec<String>,
    /// Client URL, `http://127.0.0.1:PORT` (`https` with TLS).
    pub endpoint: String,
    /// Certificate directory when etcd serves TLS.
    tls: Option<std::path::PathBuf>,
}

impl EtcdProcess {
    /// Starts etcd and waits until it answers. `Err` says why (no `etcd` binary, no answer).
    /// With `CROUPIER_REQUIRE_ETCD=1` (CI) callers should fail on `Err`, not skip.
    pub async fn start() -> Result<EtcdProcess, String> {
        Self::start_with(None).await
    }

    /// Like [`EtcdProcess::start`], serving clients over TLS with `server.pem`/`server.key`
    /// from `tls` (a `croupier certs init` directory) and requiring client certificates signed
    /// by its `ca.pem`.
    pub async fn start_tls(tls: &std::path::Path) -> Result<EtcdProcess, String> {
        Self::start_with(Some(tls.to_path_buf())).await
    }

    async fn start_with(tls: Option<std::path::PathBuf>) -> Result<EtcdProcess, String> {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| format!("picking a free port: {e}"))
        };
        let (client, peer) = (free()?, free()?);
        let dir =
            std::env::temp_dir().join(format!("croupier-etcd-{}-{client}", std::process::id()));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.with_extension("log"))
            .map_err(|e| format!("creating the etcd log: {e}"))?;
        let mut args: Vec<String> = [
            "--name",
            "t",
            "--data-dir",
            &dir.display().to_string(),
            "--listen-client-urls",
            &endpoint,
            "--advertise-client-urls",
            &endpoint,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("t={peer_url}"),
        ]
        .iter()
        .map(std::string::ToString::to_string)
        .collect();
        if let Some(t) = &tls {
            for (flag, file) in [
                ("--cert-file", "server.pem"),
                ("--key-file", "server.key"),
                ("--trusted-ca-file", "ca.pem"),
            ] {
                args.push(flag.into());
                args.push(t.join(file).display().to_string());
            }
            args.push("--client-cert-auth".into());
        }
        let child = spawn_etcd(&args, log)?;
        let process = EtcdProcess {
            child,
            dir,
            args,
            endpoint,
            tls,
        };
        process.wait_ready().await?;
        Ok(process)
    }

    /// Starts etcd again (after [`EtcdProcess::kill`]) on the same ports and data.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.dir.with_extension("log"))
            .map_err(|e| format!("opening the etcd log: {e}"))?;
        self.child = spawn_etcd(&self.args, log)?;
        self.wait_ready().await
    }

    async fn wait_ready(&self) -> Result<(), String> {
        let process = self;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let opts = crate::store::etcd::EtcdOptions {
                endpoints: vec![process.endpoint.clone()],
                timeout: Some(Duration::from_secs(1)),
                ca: process.tls.as_ref().map(|t| t.join("ca.pem")),
                cert: process.tls.as_ref().map(|t| t.join("server.pem")),
                key: process.tls.as_ref().map(|t| t.join("server.key")),
                ..Default::default()
            };
            match crate::store::etcd::EtcdStore::connect(opts).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("etcd at {} did not answer: {e}", process.endpoint));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// A store on this etcd under a fresh namespace.
    pub async fn store(&self) -> crate::store::etcd::EtcdStore {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        crate::store::etcd::EtcdStore::connect(crate::store::etcd::EtcdOptions {
            endpoints: vec![self.endpoint.clone()],
            namespace: format!("/test-{n}"),
            ..Default::default()
        })
        .await
        .expect("connecting to the test etcd")
    }

    /// Stops etcd (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("log"));
    }
}

fn spawn_etcd(args: &[String], log: std::fs::File) -> Result<std::process::Child, String> {
    std::process::Command::new("etcd")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| {
            format!("starting `etcd` ({e}); install Debian's etcd-server (scripts/test.sh does)")
        })
}

/// Starts a test etcd, or explains why not: panics when `CROUPIER_REQUIRE_ETCD=1` (CI), else
/// returns None after printing the reason (the caller skips).
pub async fn etcd_or_skip() -> Option<EtcdProcess> {
    match EtcdProcess::start().await {
        Ok(p) => Some(p),
        Err(e) if std::env::var("CROUPIER_REQUIRE_ETCD").as_deref() == Ok("1") => {
            panic!("etcd is required (CROUPIER_REQUIRE_ETCD=1): {e}")
        }
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

/// A throwaway etcd cluster of several members on loopback (see [`EtcdProcess`]).
pub struct EtcdCluster {
    /// The members, in order.
    pub members: Vec<EtcdProcess>,
}

impl EtcdCluster {
    /// Starts `n` members forming one cluster and waits until every one answers.
    pub async fn start(n: usize) -> Result<EtcdCluster, String> {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| format!("picking a free port: {e}"))
        };
        let mut ports = Vec::new();
        for _ in 0..n {
            ports.push((free()?, free()?));
        }
        let cluster: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let cluster = cluster.join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let dir =
                std::env::temp_dir().join(format!("croupier-etcd-{}-{client}", std::process::id()));
            let endpoint = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let args: Vec<String> = [
                "--name",
                &format!("m{i}"),
                "--data-dir",
                &dir.display().to_string(),
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &format!("croupier-test-{}", std::process::id()),
            ]
            .iter()
            .map(std::string::ToString::to_string)
            .collect();
            let log = std::fs::File::create(dir.with_extension("log"))
                .map_err(|e| format!("creating the etcd log: {e}"))?;
            let child = spawn_etcd(&args, log)?;
            members.push(EtcdProcess {
                child,
                dir,
                args,
                endpoint,
                tls: None,
            });
        }
        for m in &members {
            m.wait_ready().await?;
        }
        Ok(EtcdCluster { members })
    }

    /// Every member's client URL, comma-separated.
    pub fn endpoints(&self) -> String {
        let all: Vec<&str> = self.members.iter().map(|m| m.endpoint.as_str()).collect();
        all.join(",")
    }
}
