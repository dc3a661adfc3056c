//! Pulling from an OCI/Docker registry with `oci-client`.
//!
//! Why it looks like this:
//! - Manifests are fetched raw (`pull_manifest_raw`, which checks them against their digest)
//!   and parsed by [`super::parse_document`], so index → platform selection is ours and its
//!   error can list the available platforms; `oci-client`'s own resolver is disabled.
//! - Blobs go through `pull_blob` (streaming, digest-checked by `oci-client`) into the CAS's
//!   [`AsyncBlobWriter`], which is committed with the expected digest, so the CAS checks
//!   again before the blob gets its name. Nothing is buffered whole.
//! - Plain HTTP (`insecure`) is allowed for the named registry only (`HttpsExcept`), never
//!   for hosts a registry might redirect blob downloads to.
//! - Transient network failures while fetching a blob are retried a few times with a fresh
//!   writer; authentication, "not found" and digest errors are not (they would not change).
//! - `oci-client` errors are translated into [`OciError`]s that say what to do: registry
//!   unreachable (is it running? plain HTTP?), credentials missing or rejected, image not
//!   found.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::io::AsyncWrite;

use super::{
    cas_err, parse_document, reported_platform, select_manifest, Descriptor, Document, ImageConfig, Layer, OciError,
    Platform, PullProgress, Pulled, MAX_JSON, MAX_NESTING, PROGRESS_STEP,
};
use crate::cas::{AsyncBlobWriter, Cas, CasError, Digest};

const ACCEPT: &[&str] = &[
    super::MEDIA_TYPE_OCI_MANIFEST,
    super::MEDIA_TYPE_OCI_INDEX,
    super::MEDIA_TYPE_DOCKER_MANIFEST,
    super::MEDIA_TYPE_DOCKER_LIST,
];

/// Blobs downloaded at once.
const PARALLEL_BLOBS: usize = 3;

/// Attempts per blob when the network fails transiently.
const BLOB_ATTEMPTS: u32 = 3;

/// What error translation needs to know.
struct Ctx {
    registry: String,
    reference: String,
    scheme: &'static str,
    user: Option<String>,
}

impl Ctx {
    fn err(&self, what: &str, e: OciDistributionError) -> OciError {
        let registry = self.registry.clone();
        let auth = |detail: String| match &self.user {
            None => OciError::AuthRequired {
                registry: registry.clone(),
                reference: self.reference.clone(),
            },
            Some(user) => OciError::AuthRejected {
                registry: registry.clone(),
                reference: self.reference.clone(),
                user: user.clone(),
                detail,
            },
        };
        let not_found = |detail: String| OciError::NotFound {
            registry: registry.clone(),
            what: what.to_string(),
            detail,
        };
        let other = |detail: String| OciError::Registry {
            registry: registry.clone(),
            what: what.to_string(),
            detail,
        };
        match e {
            OciDistributionError::RequestError(re) if re.is_connect() || re.is_timeout() => OciError::Unreachable {
                registry: registry.clone(),
                scheme: self.scheme,
                detail: crate::error::report(&re),
                hint: if self.scheme == "https" {
                    "; if it serves plain HTTP, mark it insecure"
                } else {
                    ""
                },
            },
            OciDistributionError::UnauthorizedError { .. } => auth(String::new()),
            OciDistributionError::AuthenticationFailure(reason) => auth(format!(" ({})", reason.trim())),
            OciDistributionError::RegistryError { envelope, .. } => {
                let detail = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                let code = envelope.errors.first().map(|e| &e.code);
                match code {
                    Some(
                        OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound,
                    ) => not_found(detail),
                    Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => auth(format!(" ({detail})")),
                    _ => other(detail),
                }
            }
            OciDistributionError::ServerError { code, message, .. } => match code {
                404 => not_found(format!("HTTP 404 {}", message.trim())),
                401 | 403 => auth(format!(" (HTTP {code})")),
                _ => other(format!("HTTP {code}: {}", message.trim())),
            },
            OciDistributionError::DigestError(d) => other(format!(
                "the content does not match its digest ({d}); the registry's copy is damaged or the transfer was cut"
            )),
            OciDistributionError::RequestError(re) => other(crate::error::report(&re)),
            e => other(e.to_string()),
        }
    }
}

fn transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        _ => false,
    }
}

pub(super) async fn pull(
    reference: &str,
    insecure: bool,
    auth: Option<&(String, String)>,
    cas: &Cas,
    platform: &Platform,
    progress: &(dyn Fn(PullProgress) + Send + Sync),
) -> Result<Pulled, OciError> {
    let image_ref: Reference = reference.parse().map_err(|e| OciError::BadUri {
        uri: format!("docker://{reference}"),
        reason: format!("{reference:?} is not a valid image reference ({e})"),
    })?;
    let registry = image_ref.resolve_registry().to_string();
    let ctx = Ctx {
        registry: registry.clone(),
        reference: reference.to_string(),
        scheme: if insecure { "http" } else { "https" },
        user: auth.map(|(u, _)| u.clone()),
    };
    let client = Client::new(ClientConfig {
        protocol: if insecure {
            ClientProtocol::HttpsExcept(vec![registry.clone()])
        } else {
            ClientProtocol::Https
        },
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(15)),
        read_timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    });
    let rauth = match auth {
        Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
        None => RegistryAuth::Anonymous,
    };
    let image = format!("docker://{reference}");

    // Manifest (through nested indexes) for the platform.
    let (body, top_digest) = client
        .pull_manifest_raw(&image_ref, &rauth, ACCEPT)
        .await
        .map_err(|e| ctx.err(&format!("image {reference}"), e))?;
    let mut manifest_digest = top_digest.clone();
    let mut doc = parse_document(&body, &image, "the manifest")?;
    let mut entry_platform = None;
    let mut depth = 0;
    let (config_desc, layer_descs) = loop {
        match doc {
            Document::Manifest { config, layers } => break (config, layers),
            Document::Index(entries) => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(OciError::Unsupported {
                        image,
                        reason: format!("image indexes are nested more than {MAX_NESTING} deep"),
                    });
                }
                let chosen = select_manifest(&entries, platform, &image)?.clone();
                tracing::debug!(digest = %chosen.digest, "selected index entry");
                if chosen.platform.is_some() {
                    entry_platform = chosen.platform.clone();
                }
                let r = image_ref.clone_with_digest(chosen.digest.clone());
                let (body, digest) = client
                    .pull_manifest_raw(&r, &rauth, ACCEPT)
                    .await
                    .map_err(|e| ctx.err(&format!("manifest {} of {reference}", chosen.digest), e))?;
                manifest_digest = digest;
                doc = parse_document(&body, &image, "a platform manifest")?;
            }
        }
    };

    // Config: small, stored and parsed for the platform check.
    let config_digest = config_desc.cas_digest(&image)?;
    if config_desc.size > MAX_JSON {
        return Err(OciError::BadManifest {
            image,
            what: "the manifest".into(),
            reason: format!(
                "the config blob claims {} bytes, more than a config can be",
                config_desc.size
            ),
        });
    }
    if !present_and_sound(cas, &config_digest).await? {
        fetch_blob(
            &client,
            &image_ref,
            &config_desc,
            config_digest,
            cas,
            &ctx,
            &image,
            &|_| {},
        )
        .await?;
    }
    let config_bytes = read_small_blob(cas, &config_digest, &image).await?;
    let config = ImageConfig::parse(&config_bytes, &image)?;
    if entry_platform.is_none() {
        config.check_platform(platform, &image)?;
    }

    // Layers: a few downloads at once (registries are latency-bound per blob); `buffered`
    // keeps manifest order, and the first error drops the others (their temp files go).
    let count = layer_descs.len();
    let (client, ctx, image) = (&client, &ctx, image.as_str());
    let image_ref = &image_ref;
    let jobs = layer_descs.iter().enumerate().map(|(index, desc)| async move {
        let digest = desc.cas_digest(image)?;
        let layer_progress = |done: u64| {
            progress(PullProgress::Layer {
                index,
                count,
                digest: desc.digest.clone(),
                done,
                total: desc.size,
            })
        };
        if present_and_sound(cas, &digest).await? {
            progress(PullProgress::Message(format!(
                "layer {}/{count} {} already in the store",
                index + 1,
                desc.digest
            )));
        } else {
            layer_progress(0);
            fetch_blob(client, image_ref, desc, digest, cas, ctx, image, &layer_progress).await?;
        }
        layer_progress(desc.size);
        Ok::<Layer, OciError>(Layer {
            digest,
            media_type: if desc.media_type.is_empty() {
                super::MEDIA_TYPE_LAYER_GZIP.to_string()
            } else {
                desc.media_type.clone()
            },
            size: desc.size,
        })
    });
    // Collected first: a lazy `Map` over the iterator would make this future non-`Send`
    // (a known higher-ranked lifetime limitation).
    let jobs: Vec<_> = jobs.collect();
    let layers: Vec<Layer> = futures::stream::iter(jobs)
        .buffered(PARALLEL_BLOBS)
        .try_collect()
        .await?;

    let pinned = match image_ref.tag() {
        Some(tag) => format!(
            "docker://{}/{}:{tag}@{top_digest}",
            image_ref.registry(),
            image_ref.repository()
        ),
        None => format!(
            "docker://{}/{}@{top_digest}",
            image_ref.registry(),
            image_ref.repository()
        ),
    };
    Ok(Pulled {
        layers,
        config: Some(config_digest),
        platform: reported_platform(entry_platform.as_ref(), &config, platform),
        source: pinned,
        manifest: manifest_digest.parse().ok(),
    })
}

/// Is the blob already stored and sound? A corrupt copy is quarantined by the CAS and
/// reported as absent, so it is fetched again.
async fn present_and_sound(cas: &Cas, digest: &Digest) -> Result<bool, OciError> {
    if !cas.contains(digest) {
        return Ok(false);
    }
    let (c, d) = (cas.clone(), *digest);
    match tokio::task::spawn_blocking(move || c.verify(&d)).await {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(CasError::Corrupt { .. } | CasError::Missing(_))) => {
            tracing::warn!(%digest, "stored copy was damaged; fetching it again");
            Ok(false)
        }
        Ok(Err(e)) => Err(OciError::Cas {
            what: format!("blob {digest}"),
            image: "the local store".into(),
            source: Box::new(e),
        }),
        Err(e) => Err(OciError::Internal(format!("verify task failed: {e}"))),
    }
}

async fn read_small_blob(cas: &Cas, digest: &Digest, image: &str) -> Result<Vec<u8>, OciError> {
    let (c, d) = (cas.clone(), *digest);
    let r = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, CasError> {
        use std::io::Read;
        let f = c.open_verified(&d)?;
        let mut buf = Vec::new();
        f.take(MAX_JSON).read_to_end(&mut buf).map_err(|source| CasError::Io {
            path: c.path(&d),
            source,
        })?;
        Ok(buf)
    })
    .await
    .map_err(|e| OciError::Internal(format!("read task failed: {e}")))?;
    r.map_err(cas_err(format!("config {digest}"), image))
}

#[allow(clippy::too_many_arguments)]
async fn fetch_blob(
    client: &Client,
    image_ref: &Reference,
    desc: &Descriptor,
    digest: Digest,
    cas: &Cas,
    ctx: &Ctx,
    image: &str,
    report: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), OciError> {
    let what = format!("blob {}", desc.digest);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut writer = cas.async_writer().await.map_err(cas_err(what.clone(), image))?;
        let mut counted = Counted {
            inner: &mut writer,
            done: 0,
            last: 0,
            report,
        };
        match client.pull_blob(image_ref, desc.digest.as_str(), &mut counted).await {
            Ok(()) => {
                let got = counted.done;
                if desc.size != 0 && got != desc.size {
                    return Err(OciError::Registry {
                        registry: ctx.registry.clone(),
                        what,
                        detail: format!("sent {got} bytes, but the manifest says {}", desc.size),
                    });
                }
                writer.commit(Some(&digest)).await.map_err(cas_err(what, image))?;
                return Ok(());
            }
            Err(e) if transient(&e) && attempt < BLOB_ATTEMPTS => {
                tracing::warn!(blob = %desc.digest, attempt, error = %crate::error::report(&e), "blob download failed; retrying");
                drop(writer);
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
            Err(e) => return Err(ctx.err(&what, e)),
        }
    }
}

/// Counts bytes written through it and reports progress every [`PROGRESS_STEP`].
struct Counted<'a> {
    inner: &'a mut AsyncBlobWriter,
    done: u64,
    last: u64,
    report: &'a (dyn Fn(u64) + Send + Sync),
}

impl AsyncWrite for Counted<'_> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut *this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.done += n as u64;
                if this.done - this.last >= PROGRESS_STEP {
                    this.last = this.done;
                    (this.report)(this.done);
                }
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}
