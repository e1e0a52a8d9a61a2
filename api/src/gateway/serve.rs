//! Serving the gateway: an s3s service on its own listener, HTTP/1.1 with a header read
//! timeout (which also closes idle keep-alive connections), drained on shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::{Gateway, RoleAccess, TokenKeys};

/// How long requests in flight may take to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// The running gateway.
#[derive(Debug)]
pub struct GatewayHandle {
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl GatewayHandle {
    /// Stops accepting, lets requests in flight finish (at most 10 s), then returns.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Err(err) = self.task.await {
            tracing::warn!(error = %err, "s3 gateway task failed");
        }
    }
}

/// Binds `listener` and serves `gateway` with SigV4 auth from `keys` and role checks from
/// `access`; `domain`, when given, enables virtual-host-style buckets
/// (`<bucket>.<domain>`). A connection that has not sent a whole request header within
/// `header_read_timeout` of connecting or of its previous response is closed.
pub fn start(
    listener: TcpListener,
    gateway: Gateway,
    keys: TokenKeys,
    access: RoleAccess,
    domain: Option<&str>,
    header_read_timeout: Duration,
) -> anyhow::Result<GatewayHandle> {
    let addr = listener.local_addr()?;
    let mut builder = S3ServiceBuilder::new(gateway);
    builder.set_auth(keys);
    builder.set_access(access);
    if let Some(domain) = domain.filter(|d| !d.is_empty()) {
        builder.set_host(OfficeHost::new(domain)?);
    }
    let service = builder.build();
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(listener, service, header_read_timeout, stop.clone()));
    tracing::info!(%addr, "s3 gateway listening");
    Ok(GatewayHandle { addr, stop, task })
}

/// The connections' HTTP settings. HTTP/1.1 only: S3 clients speak it, and hyper's header
/// read timeout is an HTTP/1 setting (the protocol detection of a server that also accepts
/// HTTP/2 waits for the first bytes without any limit). hyper 1.x starts that timeout when
/// it waits for a request head, which is both on a new connection and on a kept-alive one
/// after a response, so it is the idle timeout too; it is never armed while a request's
/// body or its response is on the way, so it cuts no request in flight.
fn connection_builder(header_read_timeout: Duration) -> ConnBuilder<TokioExecutor> {
    let mut http = ConnBuilder::new(TokioExecutor::new()).http1_only();
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    http
}

async fn serve(
    listener: TcpListener,
    service: S3Service,
    header_read_timeout: Duration,
    stop: CancellationToken,
) {
    let http = connection_builder(header_read_timeout);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    let _ = socket.set_nodelay(true);
                    let service = hyper_util::service::TowerToHyperService::new(
                        tower::ServiceBuilder::new()
                            .map_request(signed_with_date)
                            .map_future(answer_with_request_id)
                            .service(service.clone()),
                    );
                    let conn = http.serve_connection(TokioIo::new(socket), service);
                    let conn = graceful.watch(conn.into_owned());
                    connections.spawn(async move {
                        if let Err(err) = conn.await {
                            tracing::debug!(error = %err, "s3 gateway connection ended with an error");
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!(error = %err, "s3 gateway cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN) => {
            tracing::warn!("s3 gateway requests still running after the drain period, closing them");
        }
    }
    connections.shutdown().await;
}

/// SigV4 lets a client sign with the `Date` header instead of `X-Amz-Date` (the AWS SDKs for
/// some languages and several S3 tools do); s3s reads the signing time from `X-Amz-Date`
/// only. The signing time of such a request is its `Date`, in the ISO 8601 basic form the
/// string to sign uses, so it is copied there. The canonical request covers the signed
/// headers only, which list `date` and not the added `x-amz-date`, so the signature checked
/// is exactly the one the client computed; a request without `Date` is left as it is.
fn signed_with_date<B>(mut req: http::Request<B>) -> http::Request<B> {
    let headers = req.headers();
    let sigv4 = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256"));
    if !sigv4 || headers.contains_key("x-amz-date") {
        return req;
    }
    let signed_at = headers
        .get(http::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| chrono::DateTime::parse_from_rfc2822(v.trim()).ok());
    if let Some(at) = signed_at {
        let basic = at
            .with_timezone(&chrono::Utc)
            .format("%Y%m%dT%H%M%SZ")
            .to_string();
        if let Ok(value) = http::HeaderValue::from_str(&basic) {
            req.headers_mut().insert("x-amz-date", value);
        }
    }
    req
}

/// The largest error body the gateway rewrites (S3's error documents are a few hundred bytes).
const MAX_ERROR_BODY: usize = 64 * 1024;

type Answer = futures::future::BoxFuture<'static, Result<s3s::HttpResponse, s3s::HttpError>>;

fn answer_with_request_id(answer: Answer) -> Answer {
    Box::pin(async move {
        let mut response = answer.await?;
        with_request_id(&mut response).await;
        Ok(response)
    })
}

/// Gives every answer a request id, as S3 does: in the `x-amz-request-id` header, and in an
/// error document's `<RequestId>` too, so that a client quoting either names the same
/// request (the office's log lines carry it as well).
async fn with_request_id(response: &mut s3s::HttpResponse) {
    let id = milepost_schema::ids::new_id("req");
    tracing::debug!(request_id = %id, status = %response.status(), "s3 gateway answered");
    if let Ok(value) = http::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-amz-request-id", value);
    }
    let is_xml_error = (response.status().is_client_error() || response.status().is_server_error())
        && response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("xml"));
    if !is_xml_error {
        return;
    }
    let Ok(body) = response.body_mut().store_all_limited(MAX_ERROR_BODY).await else {
        return;
    };
    let text = String::from_utf8_lossy(&body);
    let rewritten = match text.rfind("</Error>") {
        Some(at) if !text.contains("<RequestId>") => {
            format!("{}<RequestId>{id}</RequestId>{}", &text[..at], &text[at..])
        }
        _ => text.into_owned(),
    };
    response.headers_mut().insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(rewritten.len()),
    );
    *response.body_mut() = s3s::Body::from(bytes::Bytes::from(rewritten));
}

/// Virtual-host-style addressing under `server.s3_domain`: `<bucket>.<domain>[:port]` names
/// the bucket; any other host (the domain itself, an IP address, `localhost`) is path-style.
/// (s3s's `SingleDomain` compares the host with its port and takes any other host name for a
/// bucket, which would break path-style requests by address.)
#[derive(Debug)]
struct OfficeHost {
    /// `.<domain>`, lowercase.
    suffix: String,
}

impl OfficeHost {
    fn new(domain: &str) -> anyhow::Result<Self> {
        let domain = domain.trim().trim_matches('.').to_ascii_lowercase();
        let valid = !domain.is_empty()
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            anyhow::bail!(
                "server.s3_domain = {domain:?}: expected a domain name such as s3.office.example"
            );
        }
        Ok(Self {
            suffix: format!(".{domain}"),
        })
    }
}

impl s3s::host::S3Host for OfficeHost {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> s3s::S3Result<s3s::host::VirtualHost<'a>> {
        // `[v6]:port`, `name:port` or a bare name.
        let name = match host.rsplit_once(':') {
            Some((name, port)) if !name.ends_with(']') || name.starts_with('[') => {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    name
                } else {
                    host
                }
            }
            _ => host,
        };
        let lower = name.to_ascii_lowercase();
        let domain = &self.suffix[1..];
        match lower.strip_suffix(&self.suffix) {
            Some(bucket) if !bucket.is_empty() => {
                Ok(s3s::host::VirtualHost::new(domain).with_bucket(bucket.to_owned()))
            }
            _ => Ok(s3s::host::VirtualHost::new(name)),
        }
    }
}
