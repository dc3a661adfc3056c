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

use axum::extract::ConnectInfo;
use axum::Router;
use futures::StreamExt as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cas::zerocopy::{serve_connections, Accepted, ConnLimits};
use crate::pki::tls::{incoming, TlsConn};

/// Finished TLS connections, as [`serve_connections`] takes them.
struct TlsListener {
    conns: std::pin::Pin<Box<dyn futures::Stream<Item = io::Result<TlsConn>> + Send>>,
    local: SocketAddr,
}

/// The client's address (no zero-copy handle: bodies go through rustls).
#[derive(Clone, Copy, Debug)]
struct NodePeer(SocketAddr);

impl Accepted for NodePeer {
    fn addr(&self) -> SocketAddr {
        self.0
    }

    fn extend(&self, extensions: &mut axum::http::Extensions) {
        extensions.insert(ConnectInfo(self.0));
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = NodePeer;

    async fn accept(&mut self) -> (TlsConn, NodePeer) {
        loop {
            match self.conns.next().await {
                Some(Ok(c)) => {
                    let remote = c.peer().remote.unwrap_or(self.local);
                    return (c, NodePeer(remote));
                }
                // The accept loop logs its own errors and goes on.
                Some(Err(_)) => continue,
                // Stopped: no more connections; the server's shutdown ends it.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<NodePeer> {
        Ok(NodePeer(self.local))
    }
}

/// Serve `router` over TLS (`config`: [`crate::pki::tls::node_server_config`]) on
/// `listener` until `stop`, with the same request-head limits as plain HTTP.
pub async fn serve_tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: Router,
    limits: ConnLimits,
    stop: CancellationToken,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let conns = Box::pin(incoming(listener, config, stop.clone()));
    serve_connections(TlsListener { conns, local }, router, limits, stop.cancelled_owned()).await
}
