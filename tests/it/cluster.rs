//! Multi-head behaviour through the admin API: forwarding, failover, catch-up,
//! snapshots, and refused input leaving the state untouched.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::harness::{eventually, settings, Cluster};
use wulfpack::client::Client;
use wulfpack::model::{NetDev, NodeConf, PatchOp};
use wulfpack::state::{Command, Kind, Put, Query, QueryResult, Selector};

fn node(i: u32) -> NodeConf {
    let mut c = NodeConf {
        profiles: vec!["default".into()],
        ..Default::default()
    };
    c.network_devices.insert(
        "default".into(),
        NetDev {
            hwaddr: Some(format!("52:54:00:00:{:02x}:{:02x}", i / 256, i % 256)),
            ipaddr: Some(format!("10.1.{}.{}", i / 250, i % 250 + 1)),
            ..Default::default()
        },
    );
    c
}

async fn add(c: &Client, name: &str, i: u32) {
    c.write(Command::Add {
        kind: Kind::Node,
        items: vec![(name.to_string(), node(i))],
    })
    .await
    .unwrap();
}

fn all() -> Query {
    Query {
        profiles: Selector::All,
        ..Query::nodes(Selector::All)
    }
}

/// A head's own (non-linearizable) view.
async fn local(c: &Client) -> QueryResult {
    c.read(&all(), false).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_via_follower_read_via_another_head() {
    let c = Cluster::start(3, settings()).await;
    let leader = c.leader().await;
    let f1 = (leader + 1) % 3;
    let f2 = (leader + 2) % 3;
    let w = c
        .client_of(f1)
        .write(Command::Add {
            kind: Kind::Node,
            items: vec![("n1".into(), node(1))],
        })
        .await
        .unwrap();
    assert_eq!(w.outcome.changed, vec!["n1"]);
    // A linearizable read on the other follower sees it at once.
    let r = c.client_of(f2).read(&all(), true).await.unwrap();
    assert_eq!(r.nodes["n1"].value, node(1));
    assert_eq!(r.nodes["n1"].version, w.log_index);
    assert_eq!(r.cluster.name, "test");
    // Every head's boot view follows, merged with the default profile.
    let mac = node(1).network_devices["default"].hwaddr.clone().unwrap();
    for i in 0..3 {
        let view = c.ctx(i).view.clone();
        let mac = mac.clone();
        eventually(5, "boot view has the node", move || {
            let view = view.clone();
            let mac = mac.clone();
            async move { view.borrow().node_by_mac(&mac).is_some_and(|n| n.name == "n1") }
        })
        .await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_stop_reelection_writes_continue_and_restarted_head_catches_up() {
    let mut c = Cluster::start(3, settings()).await;
    let client = c.client();
    add(&client, "before", 1).await;
    let old = c.leader().await;
    let old_term = c.status((old + 1) % 3).term;
    c.stop(old).await;

    // Writes continue through the remaining heads after a new election.
    for i in 0..20 {
        add(&client, &format!("after{i}"), 100 + i).await;
    }
    let new = c.leader().await;
    assert_ne!(new, old);
    assert!(c.status(new).term > old_term);

    // The old leader comes back as a follower and catches up from the log.
    c.restart(old).await;
    let only_old = c.client_of(old);
    eventually(10, "restarted head has every write", || async {
        let r = local(&only_old).await;
        r.nodes.contains_key("before") && (0..20).all(|i| r.nodes.contains_key(&format!("after{i}")))
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_installs_on_new_and_lagging_heads() {
    let mut s = settings();
    s.snapshot_after_logs = 20;
    s.keep_logs_after_snapshot = 0;
    let mut c = Cluster::start(3, s).await;
    let client = c.client();

    // Head 3 (index 2) is down while the log moves past a snapshot.
    let leader = c.leader().await;
    let lagging = if leader == 2 { 1 } else { 2 };
    c.stop(lagging).await;
    for i in 0..60 {
        add(&client, &format!("n{i}"), i).await;
    }
    eventually(10, "leader built a snapshot and purged its log", || async {
        let l = c.leader().await;
        c.status(l).snapshot_index > 0
    })
    .await;

    c.restart(lagging).await;
    let lag = c.client_of(lagging);
    eventually(15, "lagging head caught up through a snapshot", || async {
        local(&lag).await.nodes.len() == 60
    })
    .await;
    assert!(
        c.status(lagging).snapshot_index > 0,
        "lagging head installed a snapshot"
    );

    // A brand-new head joins and receives the snapshot too.
    let fresh = c.join_new().await;
    let fc = c.client_of(fresh);
    eventually(15, "new head has the whole state", || async {
        local(&fc).await.nodes.len() == 60
    })
    .await;
    let st = c.status(fresh);
    assert!(st.snapshot_index > 0);
    assert!(st.voters.contains(&(fresh as u64 + 1)), "new head is a voter: {st:?}");

    // And it takes part: writes still commit, and it sees them.
    add(&client, "late", 999).await;
    eventually(10, "new head applies new writes", || async {
        local(&fc).await.nodes.contains_key("late")
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_writes_leave_state_unchanged() {
    let c = Cluster::start(3, settings()).await;
    let client = c.client();
    add(&client, "n1", 1).await;
    let before = client.read(&all(), true).await.unwrap();

    // Duplicate MAC within a batch that also holds a valid node.
    let mut dup = node(2);
    dup.network_devices.get_mut("default").unwrap().hwaddr = node(1).network_devices["default"].hwaddr.clone();
    let e = client
        .write(Command::Add {
            kind: Kind::Node,
            items: vec![("ok".into(), node(3)), ("dup".into(), dup)],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::InvalidArgument), "{e}");
    assert!(e.to_string().contains("n1"), "{e}");

    // Unknown patch path.
    let e = client
        .write(Command::Patch {
            kind: Kind::Node,
            names: vec!["n1".into()],
            patch: vec![PatchOp::Set {
                path: vec!["no such field".into()],
                value: "x".into(),
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::InvalidArgument), "{e}");

    // Stale conditional write.
    let e = client
        .write(Command::Put {
            kind: Kind::Node,
            items: vec![Put {
                name: "n1".into(),
                conf: node(1),
                expect: Some(1),
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::Aborted), "{e}");

    // (Heads register their HTTP addresses in the background: compare what the
    // refused commands could have touched.)
    let after = client.read(&all(), true).await.unwrap();
    assert_eq!(before.nodes, after.nodes);
    assert_eq!(before.profiles, after.profiles);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_through_every_head_lose_nothing() {
    let c = Cluster::start(3, settings()).await;
    let mut tasks = Vec::new();
    for h in 0..3 {
        let client = c.client_of(h);
        tasks.push(tokio::spawn(async move {
            for i in 0..30u32 {
                let n = h as u32 * 100 + i;
                add(&client, &format!("h{h}-{i}"), n).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let r = c.client().read(&all(), true).await.unwrap();
    assert_eq!(r.nodes.len(), 90);
    // Every head converges to the same state.
    for h in 0..3 {
        let cl = c.client_of(h);
        let want: BTreeMap<_, _> = r.nodes.clone();
        eventually(10, "head converged", || {
            let cl = cl.clone();
            let want = want.clone();
            async move { local(&cl).await.nodes == want }
        })
        .await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heads_register_http_and_fetch_blobs_from_each_other() {
    let c = Cluster::start(3, settings()).await;
    let client = c.client();
    let q = Query::profiles(Selector::None);
    eventually(10, "every head registered its HTTP address", || async {
        client.read(&q, true).await.unwrap().cluster.heads.len() == 3
    })
    .await;
    let heads = client.read(&q, true).await.unwrap().cluster.heads;
    assert_eq!(heads[&1].http, c.cfgs[0].http_listen);

    let data = vec![5u8; 1 << 20];
    let d = c.ctx(0).cas.put_bytes(&data).unwrap();
    assert!(!c.ctx(2).cas.contains(&d));
    // Blobs travel between heads on the gRPC port (HTTP/2; plaintext here, as the
    // harness runs `insecure`), at the addresses the heads registered.
    assert_eq!(heads[&1].grpc, c.cfgs[0].listen);
    let link = wulfpack::cas::http::PeerLink::default();
    let peers = link.bases(heads.values());
    assert_eq!(peers.len(), 3);
    let got = wulfpack::cas::http::fetch_from_peers(&c.ctx(2).cas, link.client(), &d, &peers)
        .await
        .unwrap();
    assert_eq!(got, d);
    assert_eq!(c.ctx(2).cas.verify(&d).unwrap(), data.len() as u64);
    c.shutdown().await;
}

/// A brand-new cluster answers `wwctl` before its founding head has recorded the
/// cluster name and the `default` profile (`Init`): a node write sent then waits (the
/// head says Unavailable, the client retries) instead of failing with "profile default
/// does not exist". Two founders with only the first running: Raft is initialised but
/// nothing can commit until the second starts, and both `Init` and the write are then
/// retrying at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_writes_wait_until_a_new_cluster_is_initialised() {
    let mut c = Cluster::start_some(2, settings(), |_| {}, 1).await;
    let client = c.client_of(0).with_deadline(Duration::from_secs(30));
    let node = NodeConf {
        profiles: vec!["default".into()],
        ..Default::default()
    };
    let write = tokio::spawn(async move {
        client
            .write(Command::Add {
                kind: Kind::Node,
                items: vec![("early".into(), node)],
            })
            .await
    });
    c.restart(1).await;
    let r = write.await.unwrap();
    assert!(
        r.is_ok(),
        "the early write succeeds once the cluster is initialised: {r:?}"
    );
    let got = c.client().read(&Query::nodes(Selector::All), true).await.unwrap();
    assert_eq!(got.nodes["early"].value.profiles, vec!["default".to_string()]);
    assert_eq!(got.cluster.name, "test");
    c.shutdown().await;
}

/// A head that is still opening its store (or replaying its log) answers at once,
/// `Unavailable` with how far it is, instead of leaving callers hanging on an open
/// port; it serves as soon as it is ready.
#[tokio::test(flavor = "multi_thread")]
async fn a_starting_head_says_so_instead_of_hanging() {
    use wulfpack::daemon::{Head, HeadConfig, Listeners, Member, Settings};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("head1");
    // Another holder of the data directory's lock keeps the head in "opening".
    let held = wulfpack::store::open::<wulfpack::raft::TypeConfig, wulfpack::state::State>(
        &data,
        &wulfpack::store::StoreConfig::default(),
    )
    .unwrap();
    let l = Listeners {
        grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        http: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let addr = l.grpc.local_addr().unwrap().to_string();
    let cfg = HeadConfig {
        insecure: true,
        tls: Default::default(),
        id: 1,
        data_dir: data,
        listen: addr.clone(),
        advertise: None,
        http_listen: l.http.local_addr().unwrap().to_string(),
        http_advertise: None,
        https_listen: None,
        cluster_name: "test".into(),
        bootstrap: vec![Member {
            id: 1,
            addr: addr.clone(),
        }],
        raft: Default::default(),
        cache_mib: 16,
        storage_deadline_secs: 60,
        cas_gc_grace_secs: 3600,
        cas_gc_interval_secs: 0,
        boot: Default::default(),
        power: Default::default(),
        images: Default::default(),
        artifacts: Default::default(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let starting = tokio::spawn(Head::start(Settings::try_from(cfg).unwrap(), l, async {
        let _ = stop_rx.await;
    }));
    let c = Client::new(vec![addr]).with_deadline(Duration::from_millis(700));
    let t = std::time::Instant::now();
    let e = c.read(&Query::profiles(Selector::All), false).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2), "answered in {:?}", t.elapsed());
    assert!(
        e.to_string()
            .contains("this head is starting (opening its data directory)"),
        "{e}"
    );
    drop(held);
    let head = starting
        .await
        .unwrap()
        .expect("the head starts once the directory is free");
    let c = c.with_deadline(Duration::from_secs(15));
    eventually(15, "the started head serves", || async {
        c.read(&Query::profiles(Selector::All), true)
            .await
            .is_ok_and(|r| r.profiles.contains_key("default"))
    })
    .await;
    let _ = stop_tx.send(());
    head.join().await.unwrap();
}
