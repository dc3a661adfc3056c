//! HTTP on this head's own addresses (issue 12, part 4: "bind only configured addresses").
//!
//! With `http_listen: :PORT` (the default) a head does not listen on every interface: it
//! listens on `advertise`'s host (operators, nodes in no rack), on loopback (`curl` on the
//! head itself), on its address on each DHCP subnet of its config (`boot.dhcp.subnets`,
//! `server`), and on its address on every rack that lists it — the address the rack's
//! nodes are told to fetch from (`RackHead::addr`). Racks are replicated configuration
//! and change at run time (`wwctl rack add|set|delete`), so this task follows the boot
//! view: a rack added with this head in it is served from the next view on, a rack
//! deleted stops being listened on (connections already open finish). An address that
//! cannot be bound (not on this host yet: an interface that comes up later) is logged
//! once and tried again every [`RETRY`], and whenever the racks change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::boot::view::ViewRx;

/// How often an address that could not be bound is tried again.
pub(super) const RETRY: Duration = Duration::from_secs(10);

/// The addresses HTTP should listen on besides `main`, at `port`: loopback, `fixed`
/// (the head's address on each of its DHCP subnets, from its config) and its rack
/// addresses.
pub(super) fn wanted(
    view: &ViewRx,
    me: u64,
    port: u16,
    main: SocketAddr,
    fixed: &[(Ipv4Addr, String)],
) -> BTreeMap<SocketAddr, String> {
    let v = view.borrow().clone();
    let mut out = BTreeMap::new();
    out.insert(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), "loopback".to_string());
    for (a, why) in fixed {
        out.insert(SocketAddr::from((*a, port)), why.clone());
    }
    for (name, rack) in v.racks.iter() {
        if let Some(a) = rack.addr_of(me) {
            out.entry(SocketAddr::from((a, port)))
                .and_modify(|why: &mut String| {
                    why.push_str(", ");
                    why.push_str(name)
                })
                .or_insert_with(|| format!("rack {name}"));
        }
    }
    out.remove(&main);
    out
}

/// Listen on [`wanted`] addresses until `stop`, serving `router` on each with the
/// listener's connection limits: plain HTTP, or HTTPS with `tls` (`https_listen: :PORT`,
/// the same addresses at its port).
#[allow(clippy::too_many_arguments)]
pub(super) async fn follow(
    view: ViewRx,
    me: u64,
    port: u16,
    main: SocketAddr,
    fixed: Vec<(Ipv4Addr, String)>,
    (router, limits): (Router, crate::cas::zerocopy::ConnLimits),
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: CancellationToken,
) {
    let what = if tls.is_some() { "HTTPS" } else { "HTTP" };
    let mut view_rx = view.clone();
    let mut bound: BTreeMap<SocketAddr, CancellationToken> = BTreeMap::new();
    let mut failing: BTreeSet<SocketAddr> = BTreeSet::new();
    loop {
        let want = wanted(&view, me, port, main, &fixed);
        for (addr, why) in &want {
            if bound.contains_key(addr) {
                continue;
            }
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    failing.remove(addr);
                    let token = stop.child_token();
                    tracing::info!(%addr, "{what} also listening on {addr} ({why})");
                    match &tls {
                        None => {
                            tokio::spawn(crate::cas::zerocopy::serve_with(
                                l,
                                router.clone(),
                                limits,
                                token.clone().cancelled_owned(),
                            ));
                        }
                        Some(config) => {
                            tokio::spawn(crate::boot::http::tls::serve_tls(
                                l,
                                config.clone(),
                                router.clone(),
                                limits,
                                token.clone(),
                            ));
                        }
                    }
                    bound.insert(*addr, token);
                }
                Err(e) => {
                    if failing.insert(*addr) {
                        tracing::warn!(
                            %addr,
                            "{what} cannot listen on {addr} ({why}): {e}; nodes told to fetch from it get nothing \
                             until the address is on this host (tried again every {} s)",
                            RETRY.as_secs()
                        );
                    }
                }
            }
        }
        bound.retain(|addr, token| {
            let keep = want.contains_key(addr);
            if !keep {
                tracing::info!(%addr, "{what} no longer listening on {addr} (no rack lists it for this head)");
                token.cancel();
            }
            keep
        });
        failing.retain(|a| want.contains_key(a));
        tokio::select! {
            _ = stop.cancelled() => return,
            r = view_rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(RETRY), if !failing.is_empty() => {}
        }
    }
}
