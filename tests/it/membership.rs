//! Membership (issue 10, part 8): a head joins as a learner and becomes a voter only
//! once it has the log and every artifact; `wwctl cluster status` rows show lag,
//! missing blobs and the racks each head serves; a dead head is removed and replaced.
//!
//! The in-process cluster runs inside a namespace the test creates, so each head's DHCP
//! can hold an interface (one end of a veth pair) with its rack address (a rack is served only where an
//! interface holds the head's address on it); nothing is sent on those interfaces.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wulfpack::cas::Digest;

use crate::harness::{eventually, settings, Cluster};
use crate::images::small_root;
use crate::netns::{skip_reason, NetNs};

/// `boot.dhcp` with one interface and no subnets of its own (racks add theirs).
fn dhcp_on(iface: &str) -> wulfpack::boot::dhcp::config::DhcpConfigWire {
    serde_yaml_ng::from_str(&format!("interfaces: [{{name: {iface}}}]")).unwrap()
}

/// `wwctl` against the first `n` heads only (a head that is not a member yet would
/// only slow the client down); Ok(stdout) or Err(error text).
async fn ww_n(c: &Cluster, n: usize, args: &[&str]) -> Result<String, String> {
    use clap::Parser;
    let heads = (0..n).map(|i| c.addr(i)).collect::<Vec<_>>().join(",");
    let mut argv = vec!["wwctl", "--heads", &heads];
    argv.extend_from_slice(args);
    let cli = wulfpack::cli::Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    wulfpack::cli::run(cli, &mut out).await.map_err(|e| format!("{e:#}"))?;
    Ok(String::from_utf8(out).unwrap())
}

async fn ok_n(c: &Cluster, n: usize, args: &[&str]) -> String {
    ww_n(c, n, args).await.unwrap_or_else(|e| panic!("wwctl {args:?}: {e}"))
}

/// The rows of `wwctl -o json cluster status` (asked of the first `n` heads).
async fn rows(c: &Cluster, n: usize) -> Vec<Value> {
    let out = ok_n(c, n, &["-o", "json", "cluster", "status"]).await;
    let v: Value = serde_json::from_str(&out).unwrap();
    v["heads"].as_array().unwrap().clone()
}

fn row(rows: &[Value], id: u64) -> Value {
    rows.iter().find(|h| h["id"] == id).cloned().unwrap_or(Value::Null)
}

/// The cell of `col` in the table row of head `id`.
fn cell(table: &str, id: &str, col: &str) -> String {
    let header = table.lines().find(|l| l.starts_with("HEAD")).expect("header");
    let line = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("no row {id}:\n{table}"));
    let at = header.find(col).unwrap_or_else(|| panic!("no column {col}:\n{table}"));
    line.get(at..)
        .unwrap_or("")
        .split("  ")
        .next()
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_fourth_head_is_a_learner_until_it_holds_every_blob_then_a_voter_serving_its_rack() {
    if let Some(why) = skip_reason(&[("ip", "iproute2")]) {
        eprintln!("SKIP a_fourth_head_is_a_learner_until_it_holds_every_blob: {why}");
        return;
    }
    let ns = NetNs::new("mbr");
    // Head i's address on its rack: rack r1 is served by heads 1 then 2, rack r2 by 3 then 4.
    for (i, cidr) in [
        (1, "10.97.0.1/24"),
        (2, "10.97.0.2/24"),
        (3, "10.98.0.3/24"),
        (4, "10.98.0.4/24"),
    ] {
        ns.ok(&format!(
            "ip link add d{i} type veth peer name e{i} && ip addr add {cidr} dev d{i} && \
             ip link set d{i} up && ip link set e{i} up"
        ));
    }
    let t = ns.enter(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap()
            .block_on(learner_until_every_blob())
    });
    if let Err(e) = t.join() {
        std::panic::resume_unwind(e);
    }
}

async fn learner_until_every_blob() {
    let mut c = Cluster::start_with(3, settings(), |cfg| cfg.boot.dhcp = dhcp_on(&format!("d{}", cfg.id))).await;
    let n3 = 3;
    for args in [
        [
            "rack",
            "add",
            "r1",
            "--network",
            "10.97.0.0/24",
            "--head",
            "1=10.97.0.1",
            "--head",
            "2=10.97.0.2",
        ],
        [
            "rack",
            "add",
            "r2",
            "--network",
            "10.98.0.0/24",
            "--head",
            "3=10.98.0.3",
            "--head",
            "4=10.98.0.4",
        ],
    ] {
        ok_n(&c, n3, &args).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_root(&src);
    let out = ok_n(&c, 1, &["image", "import", src.to_str().unwrap(), "img"]).await;
    assert!(out.contains("Imported image img"), "{out}");
    ok_n(
        &c,
        n3,
        &["node", "add", "n1", "--image", "img", "--ipaddr", "10.97.0.50"],
    )
    .await;
    let blobs: Vec<Digest> = c.ctx(0).sm.read(|s| s.images["img"].value.blobs().collect());

    // Every founder holds every blob and serves its racks; the rows say so.
    eventually(30, "heads 1-3: 0 missing, racks served", || async {
        let r = rows(&c, n3).await;
        (1..=3).all(|id| row(&r, id)["missing_blobs"] == 0)
            && row(&r, 1)["racks_served"] == json!(["r1"])
            && row(&r, 2)["racks_served"] == json!(["r1"])
            && row(&r, 3)["racks_served"] == json!(["r2"])
    })
    .await;
    let table = ok_n(&c, n3, &["cluster", "status"]).await;
    assert_eq!(cell(&table, "1", "RACKS"), "r1", "{table}");
    assert_eq!(cell(&table, "3", "RACKS"), "r2", "{table}");

    // A fourth head that cannot fetch (prefetch off): `join` waits until its deadline,
    // then says the head stays a learner and how to finish.
    let i4 = c
        .start_new(|cfg| {
            cfg.boot.dhcp = dhcp_on("d4");
            cfg.artifacts.prefetch = false;
        })
        .await;
    let addr4 = c.cfgs[i4].listen.clone();
    let t = Instant::now();
    let e = ww_n(&c, n3, &["--timeout", "4", "cluster", "join", "4", &addr4])
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert!(e.contains("head 4 stays a learner"), "{e}");
    assert!(e.contains("lacks"), "{e}");
    assert!(e.contains("wwctl cluster promote 4"), "{e}");
    assert!(e.contains(&format!("cluster join 4 {addr4}")), "{e}");
    assert!(
        took < Duration::from_millis(5500),
        "join ran {took:?} past its 4 s timeout"
    );

    // It is a learner, visible as such, lacking blobs and not serving its rack.
    let r = rows(&c, n3).await;
    let r4 = row(&r, 4);
    assert_eq!(r4["role"], "Learner", "{r4}");
    assert!(r4["missing_blobs"].as_u64().unwrap() > 0, "{r4}");
    assert_eq!(r4["racks_served"], json!([]), "{r4}");
    assert_eq!(r4["racks_listed"], json!(["r2"]), "{r4}");
    let leader = c.leader().await;
    assert!(c.status(leader).learners.contains(&4) && !c.status(leader).voters.contains(&4));
    let table = ok_n(&c, n3, &["cluster", "status"]).await;
    assert_eq!(cell(&table, "4", "ROLE"), "Learner", "{table}");
    assert_eq!(cell(&table, "4", "RACKS"), "- (not r2)", "{table}");
    let e = ww_n(&c, n3, &["cluster", "promote", "4"]).await.unwrap_err();
    assert!(e.contains("lacks"), "{e}");

    // With prefetch on it fetches everything; `join` again promotes it once it has.
    c.stop(i4).await;
    c.cfgs[i4].artifacts.prefetch = true;
    c.restart(i4).await;
    let out = ok_n(&c, n3, &["--timeout", "60", "cluster", "join", "4", &addr4]).await;
    assert!(out.contains("head 4 is a voter"), "{out}");
    assert!(
        blobs.iter().all(|d| c.ctx(i4).cas.contains(d)),
        "head 4 became a voter while lacking a blob of the image"
    );
    assert_eq!(c.ctx(i4).artifacts.current().count(), 0);
    let leader = c.leader().await;
    assert!(c.status(leader).voters.contains(&4), "{:?}", c.status(leader));

    eventually(20, "head 4's row: a follower, lag 0, 0 missing, serving r2", || async {
        let r = rows(&c, 4).await;
        let r4 = row(&r, 4);
        r4["role"] == "Follower" && r4["lag"] == 0 && r4["missing_blobs"] == 0 && r4["racks_served"] == json!(["r2"])
    })
    .await;
    let table = ok_n(&c, 4, &["cluster", "status"]).await;
    assert_eq!(cell(&table, "4", "LAG"), "0", "{table}");
    assert_eq!(cell(&table, "4", "MISSING"), "0", "{table}");
    assert_eq!(cell(&table, "4", "RACKS"), "r2", "{table}");
    // Joining a voter again changes nothing.
    let out = ok_n(&c, 4, &["cluster", "join", "4", &addr4]).await;
    assert!(out.contains("head 4 is a voter"), "{out}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_heads_id_is_not_reused_and_a_joined_head_must_be_the_one_named() {
    let mut c = Cluster::start(3, settings()).await;
    eventually(20, "head 3 registered its HTTP address", || async {
        c.ctx(0).sm.read(|s| s.cluster.heads.contains_key(&3))
    })
    .await;
    c.stop(2).await;
    let out = ok_n(&c, 2, &["cluster", "remove", "3"]).await;
    assert!(out.contains("head 3 removed"), "{out}");
    let i4 = c.start_new(|_| {}).await;
    let addr4 = c.cfgs[i4].listen.clone();
    let e = ww_n(&c, 2, &["cluster", "join", "3", &addr4]).await.unwrap_err();
    assert!(
        e.contains("head id 3 belonged to a head that was removed") && e.contains("never reused"),
        "{e}"
    );
    // A wrong id for a running head is refused before anything changes.
    let e = ww_n(&c, 2, &["cluster", "join", "5", &addr4]).await.unwrap_err();
    assert!(e.contains(&format!("the head at {addr4} is head 4, not 5")), "{e}");
    let leader = c.leader().await;
    let st = c.status(leader);
    assert!(!st.learners.contains(&5) && !st.voters.contains(&3), "{st:?}");
    let out = ok_n(&c, 2, &["cluster", "join", "4", &addr4]).await;
    assert!(out.contains("head 4 is a voter"), "{out}");
    c.shutdown().await;
}

mod procs {
    //! The same with real `wulfd` processes: a SIGKILLed head is removed and replaced.

    use std::path::Path;

    use serde_json::{json, Value};

    use super::{cell, row};
    use crate::proc_cluster::{run_wwctl, wait_until, ProcCluster, WwctlRun};

    const WULFD: &str = env!("CARGO_BIN_EXE_wulfd");
    const WWCTL: &str = env!("CARGO_BIN_EXE_wwctl");

    fn wwctl(heads: &str, args: &[&str]) -> WwctlRun {
        run_wwctl(Path::new(WWCTL), heads, args)
    }

    fn ok(heads: &str, args: &[&str]) -> String {
        let r = wwctl(heads, args);
        assert!(r.ok(), "wwctl {args:?} via {heads} failed: {}", r.stderr);
        r.stdout
    }

    fn rows(heads: &str) -> Vec<Value> {
        let r = wwctl(heads, &["--timeout", "3", "cluster", "status", "-o", "json"]);
        if !r.ok() {
            return Vec::new();
        }
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        v["heads"].as_array().unwrap().clone()
    }

    #[test]
    fn a_sigkilled_head_is_removed_and_replaced_by_a_new_head_in_its_rack() {
        let mut p = ProcCluster::start(Path::new(WULFD), 3, "");
        let all = p.all_heads();
        wait_until(30, "cluster initialised", || {
            let r = wwctl(&all, &["--timeout", "2", "profile", "list"]);
            r.ok() && r.stdout.lines().any(|l| l.starts_with("default"))
        });
        ok(
            &all,
            &[
                "rack",
                "add",
                "r1",
                "--network",
                "10.96.0.0/24",
                "--head",
                "1=10.96.0.1",
                "--head",
                "2=10.96.0.2",
            ],
        );

        // Head 2 dies (whatever its role); the survivors show it unreachable.
        p.kill(1);
        let live = format!("{},{}", p.addrs[0], p.addrs[2]);
        wait_until(20, "head 2 unreachable, a leader answering", || {
            let r = rows(&live);
            row(&r, 2)["reachable"] == false && r.iter().any(|h| h["role"] == "Leader")
        });
        let table = ok(&live, &["cluster", "status"]);
        assert_eq!(cell(&table, "2", "RACKS"), "-- (not r1)", "{table}");
        assert!(cell(&table, "2", "HEALTH").starts_with("unreachable"), "{table}");

        // Remove the dead voter (3 voters, 2 alive); wwctl names the rack still listing it.
        let out = ok(&live, &["cluster", "remove", "2"]);
        assert!(out.contains("head 2 removed"), "{out}");
        assert!(
            out.contains(
                "rack r1 still lists head 2; give it its heads with `wwctl rack set r1 --head 1=10.96.0.1 --head NEWID=ADDRESS`"
            ),
            "{out}"
        );
        wait_until(10, "status lists heads 1 and 3 only", || {
            let r = rows(&live);
            r.iter().map(|h| h["id"].as_u64().unwrap()).collect::<Vec<_>>() == [1, 3]
        });

        // The replacement: a new machine gets a new id; the dead one's id is refused.
        let i4 = p.start_empty("");
        let addr4 = p.addrs[i4].clone();
        // Refused as a removed head's id (`cluster remove` retired it in the state,
        // whether or not head 2 ever registered its HTTP address).
        let r = wwctl(&live, &["cluster", "join", "2", &addr4]);
        assert!(!r.ok(), "{}", r.stdout);
        assert!(r.stderr.contains("never reused"), "{}", r.stderr);
        let out = ok(&live, &["--timeout", "60", "cluster", "join", "4", &addr4]);
        assert!(out.contains("head 4 is a voter"), "{out}");
        ok(
            &live,
            &["rack", "set", "r1", "--head", "1=10.96.0.1", "--head", "4=10.96.0.4"],
        );
        let list = ok(&live, &["rack", "list"]);
        assert!(list.contains("1=10.96.0.1,4=10.96.0.4"), "{list}");

        let now = format!("{live},{addr4}");
        wait_until(
            20,
            "heads 1, 3, 4: voters, reachable, lag 0, 0 missing; r1 lists 4",
            || {
                let r = rows(&now);
                row(&r, 4)["racks_listed"] == json!(["r1"])
                    && r.iter().map(|h| h["id"].as_u64().unwrap()).collect::<Vec<_>>() == [1, 3, 4]
                    && r.iter()
                        .all(|h| h["reachable"] == true && h["lag"] == 0 && h["missing_blobs"] == 0)
                    && r.iter().filter(|h| h["role"] == "Leader").count() == 1
                    && r.iter().all(|h| h["role"] == "Leader" || h["role"] == "Follower")
            },
        );
        // Head 4 votes: with head 1 killed too, heads 3 and 4 are a majority of the three voters.
        p.kill(0);
        let rest = format!("{},{addr4}", p.addrs[2]);
        ok(&rest, &["--timeout", "20", "node", "add", "after-replace"]);
        assert!(ok(&rest, &["node", "list"]).contains("after-replace"));
    }
}
