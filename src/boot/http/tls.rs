//! HTTPS for nodes (`https_listen`, issue 12 part 4): the boot routes of [`super::router`]
//! over TLS with the head's own certificate, for `wwclient` with the cluster CA pinned
//! (the `wwclient` overlay writes it into the node).
//!
//! The same router as plain HTTP, so every rule holds the same way: the runtime overlay
//! only to the node's address, from a privileged port in secure mode, with its asset
//! key. What TLS adds is that the node knows it talks to a head of its cluster (no one
//! on the rack network can serve it keys or a rogue `authorized_keys`) and that the
//! overlay's secrets do not cross the wire in clear. Handshakes run as the gRPC port's
//! do ([`crate::pki::tls::incoming`]: each in its own task within 5 s, refusals logged
//! at most once per 10 s with a count); bodies are written through rustls, not with
//! `sendfile` (the large boot files stay on plain HTTP, which iPXE fetches).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request};
use axum::serve::IncomingStream;
use axum::Router;
use futures::StreamExt as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::pki::tls::{incoming, TlsConn};

/// Finished TLS connections, as axum's `serve` takes them.
struct TlsListener {
    conns: std::pin::Pin<Box<dyn futures::Stream<Item = io::Result<TlsConn>> + Send>>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TlsConn, SocketAddr) {
        loop {
            match self.conns.next().await {
                Some(Ok(c)) => {
                    let remote = c.peer().remote.unwrap_or(self.local);
                    return (c, remote);
                }
                // The accept loop logs its own errors and goes on.
                Some(Err(_)) => continue,
                // Stopped: no more connections; `serve`'s graceful shutdown ends it.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The client's address, as the boot routes read it (`ConnectInfo<SocketAddr>`).
#[derive(Clone, Copy, Debug)]
struct NodePeer(SocketAddr);

impl Connected<IncomingStream<'_, TlsListener>> for NodePeer {
    fn connect_info(s: IncomingStream<'_, TlsListener>) -> Self {
        NodePeer(*s.remote_addr())
    }
}

/// Serve `router` over TLS (`config`: [`crate::pki::tls::node_server_config`]) on
/// `listener` until `stop`.
pub async fn serve_tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: Router,
    stop: CancellationToken,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let conns = Box::pin(incoming(listener, config, stop.clone()));
    let app = router.layer(axum::middleware::map_request(|mut req: Request| async move {
        if let Some(ConnectInfo(NodePeer(addr))) = req.extensions_mut().remove::<ConnectInfo<NodePeer>>() {
            req.extensions_mut().insert(ConnectInfo(addr));
        }
        req
    }));
    axum::serve(
        TlsListener { conns, local },
        app.into_make_service_with_connect_info::<NodePeer>(),
    )
    .with_graceful_shutdown(stop.cancelled_owned())
    .await
}
