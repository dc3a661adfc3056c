//! Blobs over HTTP between heads: `GET /blob/sha256:<hex>` serves a verified blob
//! (with Range and ETag, see [`serve`]);
//! [`fetch_from_peers`] pulls one from the first peer that has it and stores it only
//! if its content matches the digest.

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::serve::{self, Verifier};
use super::{Cas, CasError, Digest};

/// Routes serving this head's blobs, through the same Range/ETag code as the boot
/// routes ([`serve::respond`]), so a peer can resume or revalidate a transfer.
pub fn router(cas: Cas) -> Router {
    Router::new()
        .route("/blob/{digest}", get(get_blob))
        .with_state(Verifier::new(cas))
}

async fn get_blob(State(verifier): State<Verifier>, UrlPath(digest): UrlPath<String>, headers: HeaderMap) -> Response {
    let d: Digest = match digest.parse() {
        Ok(d) => d,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match verifier.open(d).await {
        Ok((file, len)) => serve::respond(file, len, &d, &headers),
        Err(CasError::Missing(_)) => (StatusCode::NOT_FOUND, format!("blob {d} not here")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Fetch `digest` from the first of `peers` (HTTP base URLs or host:port) that has
/// it; the blob is stored only if its content hashes to `digest`.
pub async fn fetch_from_peers(
    cas: &Cas,
    http: &reqwest::Client,
    digest: &Digest,
    peers: &[String],
) -> Result<Digest, CasError> {
    if cas.contains(digest) {
        return Ok(*digest);
    }
    let mut errors = Vec::new();
    for peer in peers {
        let base = if peer.contains("://") {
            peer.trim_end_matches('/').to_string()
        } else {
            format!("http://{peer}")
        };
        let url = format!("{base}/blob/{digest}");
        match fetch_one(cas, http, digest, &url).await {
            Ok(d) => return Ok(d),
            Err(e) => errors.push(format!("{url}: {e}")),
        }
    }
    Err(CasError::PeerFetch {
        digest: *digest,
        errors: if errors.is_empty() {
            "no peers known".into()
        } else {
            errors.join("; ")
        },
    })
}

async fn fetch_one(cas: &Cas, http: &reqwest::Client, digest: &Digest, url: &str) -> Result<Digest, String> {
    let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let mut w = cas.async_writer().await.map_err(|e| e.to_string())?;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        w.write_all(&chunk).await.map_err(|e| e.to_string())?;
    }
    w.commit(Some(digest)).await.map_err(|e| e.to_string())
}
