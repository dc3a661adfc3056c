//! In-process multi-head cluster: real sockets on 127.0.0.1 port 0, real sled
//! stores in temp dirs, real gRPC between heads. Heads can be stopped and
//! restarted on the same address with the same data.

use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use wulfpack::client::Client;
use wulfpack::daemon::{Head, HeadConfig, Listeners, Member};
use wulfpack::raft::RaftSettings;

pub struct Running {
    head: Head,
    stop: oneshot::Sender<()>,
}

pub struct Cluster {
    pub dir: TempDir,
    pub cfgs: Vec<HeadConfig>,
    pub heads: Vec<Option<Running>>,
}

pub fn settings() -> RaftSettings {
    RaftSettings::default()
}

impl Cluster {
    /// Start `n` founding heads.
    pub async fn start(n: usize, raft: RaftSettings) -> Cluster {
        Self::start_with(n, raft, |_| {}).await
    }

    /// Start `n` founding heads, adjusting each config first.
    pub async fn start_with(n: usize, raft: RaftSettings, adjust: impl Fn(&mut HeadConfig)) -> Cluster {
        let c = Self::start_some(n, raft, adjust, n).await;
        c.wait_ready().await;
        c
    }

    /// Configure `n` founding heads but launch only the first `running` (the rest start
    /// with [`Cluster::restart`]); does not wait for the cluster to be ready.
    pub async fn start_some(n: usize, raft: RaftSettings, adjust: impl Fn(&mut HeadConfig), running: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(bind_pair().await);
        }
        let members: Vec<Member> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| Member {
                id: i as u64 + 1,
                addr: l.grpc.local_addr().unwrap().to_string(),
            })
            .collect();
        let cfgs: Vec<HeadConfig> = members
            .iter()
            .zip(&listeners)
            .map(|(m, l)| HeadConfig {
                insecure: true,
                tls: Default::default(),
                id: m.id,
                data_dir: dir.path().join(format!("head{}", m.id)),
                listen: m.addr.clone(),
                advertise: None,
                http_listen: l.http.local_addr().unwrap().to_string(),
                http_advertise: None,
                https_listen: None,
                cluster_name: "test".into(),
                bootstrap: members.clone(),
                raft: raft.clone(),
                cache_mib: 16,
                storage_deadline_secs: 60,
                cas_gc_grace_secs: 3600,
                cas_gc_interval_secs: 600,
                boot: Default::default(),
                power: Default::default(),
                images: Default::default(),
                artifacts: Default::default(),
            })
            .collect();
        let mut cfgs = cfgs;
        cfgs.iter_mut().for_each(&adjust);
        let mut c = Cluster {
            dir,
            cfgs,
            heads: Vec::new(),
        };
        for (i, (cfg, l)) in c.cfgs.clone().into_iter().zip(listeners).enumerate() {
            // Heads not launched yet give their ports back; `restart` binds them again.
            c.heads
                .push(if i < running { Some(launch(cfg, l).await) } else { None });
        }
        c
    }

    pub fn addr(&self, i: usize) -> String {
        self.cfgs[i].listen.clone()
    }

    /// A client that knows every head.
    pub fn client(&self) -> Client {
        Client::new(self.cfgs.iter().map(|c| c.listen.clone()).collect())
    }

    /// A client bound to one head only.
    pub fn client_of(&self, i: usize) -> Client {
        Client::new(vec![self.addr(i)]).with_deadline(Duration::from_secs(10))
    }

    /// Wait until a leader exists and the cluster was initialised (default profile present).
    pub async fn wait_ready(&self) {
        let c = self.client();
        let q = wulfpack::state::Query::profiles(wulfpack::state::Selector::All);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = c.read(&q, true).await {
                if r.profiles.contains_key("default") {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "cluster did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Index of the head that is leader according to a running head, waiting for one.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            for h in self.heads.iter().flatten() {
                let st = h.head.parts.head_status();
                if st.role == "Leader" {
                    return (st.id - 1) as usize;
                }
            }
            assert!(Instant::now() < deadline, "no leader elected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn ctx(&self, i: usize) -> &wulfpack::daemon::Parts {
        &self.heads[i].as_ref().expect("head running").head.parts
    }

    pub fn status(&self, i: usize) -> wulfpack::cluster::HeadStatus {
        self.heads[i].as_ref().expect("head running").head.parts.head_status()
    }

    /// Stop head `i` (server and Raft); its data stays.
    pub async fn stop(&mut self, i: usize) {
        let r = self.heads[i].take().expect("head running");
        let _ = r.stop.send(());
        r.head.join().await.unwrap();
    }

    /// Restart head `i` on its old address with its old data.
    pub async fn restart(&mut self, i: usize) {
        let l = Listeners {
            grpc: bind_retry(&self.cfgs[i].listen).await,
            http: bind_retry(&self.cfgs[i].http_listen).await,
        };
        self.heads[i] = Some(launch(self.cfgs[i].clone(), l).await);
    }

    /// Start a new empty head (no bootstrap) and join it through the cluster.
    pub async fn join_new(&mut self) -> usize {
        let i = self.start_new(|_| {}).await;
        let id = self.cfgs[i].id;
        self.client().add_head(id, &self.cfgs[i].listen, false).await.unwrap();
        i
    }

    /// Start a new empty head (no bootstrap, id = number of heads + 1), adjusting its
    /// config first; it is not joined. Returns its index.
    pub async fn start_new(&mut self, adjust: impl Fn(&mut HeadConfig)) -> usize {
        let l = bind_pair().await;
        let id = self.cfgs.len() as u64 + 1;
        let mut cfg = HeadConfig {
            insecure: true,
            tls: Default::default(),
            id,
            data_dir: self.dir.path().join(format!("head{id}")),
            listen: l.grpc.local_addr().unwrap().to_string(),
            advertise: None,
            http_listen: l.http.local_addr().unwrap().to_string(),
            http_advertise: None,
            https_listen: None,
            cluster_name: "test".into(),
            bootstrap: vec![],
            raft: self.cfgs[0].raft.clone(),
            cache_mib: 16,
            storage_deadline_secs: 60,
            cas_gc_grace_secs: self.cfgs[0].cas_gc_grace_secs,
            cas_gc_interval_secs: self.cfgs[0].cas_gc_interval_secs,
            boot: Default::default(),
            power: Default::default(),
            images: Default::default(),
            artifacts: Default::default(),
        };
        adjust(&mut cfg);
        self.cfgs.push(cfg.clone());
        self.heads.push(Some(launch(cfg, l).await));
        self.cfgs.len() - 1
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.heads.len() {
            if self.heads[i].is_some() {
                self.stop(i).await;
            }
        }
    }
}

async fn bind_pair() -> Listeners {
    Listeners {
        grpc: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    }
}

async fn launch(cfg: HeadConfig, l: Listeners) -> Running {
    let (tx, rx) = oneshot::channel::<()>();
    let head = Head::start(cfg.try_into().expect("valid head config"), l, async {
        let _ = rx.await;
    })
    .await
    .unwrap();
    Running { head, stop: tx }
}

async fn bind_retry(addr: &str) -> TcpListener {
    for _ in 0..100 {
        if let Ok(l) = TcpListener::bind(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot rebind {addr}");
}

/// Poll `f` until it returns true, for at most `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run `wwctl` in-process against every head of the cluster; Ok(stdout) or Err(error text).
pub async fn ww(c: &Cluster, args: &[&str]) -> Result<String, String> {
    use clap::Parser;
    let heads = (0..c.cfgs.len()).map(|i| c.addr(i)).collect::<Vec<_>>().join(",");
    let mut argv = vec!["wwctl", "--heads", &heads];
    argv.extend_from_slice(args);
    let cli = wulfpack::cli::Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    wulfpack::cli::run(cli, &mut out).await.map_err(|e| format!("{e:#}"))?;
    Ok(String::from_utf8(out).unwrap())
}

/// [`ww`] that must succeed.
pub async fn ok(c: &Cluster, args: &[&str]) -> String {
    ww(c, args).await.unwrap_or_else(|e| panic!("wwctl {args:?}: {e}"))
}

/// Compare `actual` with `tests/golden/NAME`; `UPDATE_GOLDEN=1` rewrites the file.
pub fn golden(name: &str, actual: &str) {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display()));
    assert_eq!(actual, want, "output differs from {}", path.display());
}
