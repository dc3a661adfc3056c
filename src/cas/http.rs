//! Blobs over HTTP between heads: `GET /blob/sha256:<hex>` serves a verified blob;
//! [`fetch_from_peers`] pulls one from the first peer that has it and stores it only
//! if its content matches the digest.

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{Cas, CasError, Digest};

/// Routes serving this head's blobs.
pub fn router(cas: Cas) -> Router {
    Router::new().route("/blob/{digest}", get(get_blob)).with_state(cas)
}

async fn get_blob(State(cas): State<Cas>, UrlPath(digest): UrlPath<String>) -> Response {
    let d: Digest = match digest.parse() {
        Ok(d) => d,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let c = cas.clone();
    let verified = tokio::task::spawn_blocking(move || c.open_verified(&d)).await;
    match verified {
        Ok(Ok(file)) => {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let stream = tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 256 * 1024);
            (
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                    (header::CONTENT_LENGTH, len.to_string()),
                ],
                Body::from_stream(stream),
            )
                .into_response()
        }
        Ok(Err(CasError::Missing(_))) => (StatusCode::NOT_FOUND, format!("blob {d} not here")).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
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
