//! [`FaultProxy`]: an HTTP proxy in front of an S3 endpoint that injects upstream failures.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// What [`FaultProxy`] does to a request instead of passing it through untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer `503 SlowDown` (S3's throttling answer, with its XML body) without forwarding.
    SlowDown,
    /// Answer this HTTP status with an S3 error body without forwarding: code
    /// `InternalError` for 500, `ServiceUnavailable` for 503, `InjectedFault` otherwise.
    Status(u16),
    /// Reset the connection (TCP RST) without answering or forwarding.
    Reset,
    /// Forward, but close the connection after this many bytes of the response body. Applies
    /// to GET requests only: other requests pass through without using it up.
    CutBody(u64),
}

/// A request as the proxy saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenRequest {
    /// `GET`, `PUT`...
    pub method: String,
    /// The request target: path and query.
    pub target: String,
    /// The headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The fault applied to it, if any.
    pub fault: Option<Fault>,
}

impl SeenRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A small HTTP/1.1 reverse proxy on `127.0.0.1:0` in front of an S3 endpoint, for tests of
/// failure handling: it can answer the next requests with `503 SlowDown`, reset connections,
/// cut GET bodies off, and add latency. It records the requests it saw and counts the bytes it
/// passed.
///
/// Faults are queued with [`inject`](Self::inject) and used up in order, one per request.
/// Every request is forwarded on its own upstream connection with `Connection: close`, so a
/// fault never leaks into a later request. HTTP only (no TLS), no chunked request bodies.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.state.upstream)
            .field("requests", &self.requests())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct State {
    upstream: SocketAddr,
    faults: Mutex<VecDeque<(Fault, usize)>>,
    latency: Mutex<Duration>,
    seen: Mutex<Vec<SeenRequest>>,
    requests: AtomicU64,
    bytes_to_client: AtomicU64,
    bytes_to_upstream: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// The fault for a `method` request, using it up.
    fn take_fault(&self, method: &str) -> Option<Fault> {
        let mut faults = lock(&self.faults);
        let (fault, remaining) = faults.front_mut()?;
        let fault = *fault;
        if matches!(fault, Fault::CutBody(_)) && method != "GET" {
            return None;
        }
        *remaining -= 1;
        if *remaining == 0 {
            faults.pop_front();
        }
        Some(fault)
    }
}

impl FaultProxy {
    /// A proxy in front of `upstream_endpoint` (`http://host:port`).
    pub async fn start(upstream_endpoint: &str) -> io::Result<Self> {
        let authority = upstream_endpoint
            .strip_prefix("http://")
            .unwrap_or(upstream_endpoint)
            .trim_end_matches('/');
        let upstream = tokio::net::lookup_host(authority)
            .await?
            .next()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("cannot resolve {upstream_endpoint}"),
                )
            })?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            upstream,
            faults: Mutex::new(VecDeque::new()),
            latency: Mutex::new(Duration::ZERO),
            seen: Mutex::new(Vec::new()),
            requests: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            bytes_to_upstream: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&state), stop.clone()));
        Ok(Self {
            addr,
            state,
            stop,
            task: Some(task),
        })
    }

    /// The proxy's endpoint URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Applies `fault` to the next `times` requests (after the faults already queued);
    /// `usize::MAX` for ever.
    pub fn inject(&self, fault: Fault, times: usize) {
        if times > 0 {
            lock(&self.state.faults).push_back((fault, times));
        }
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        lock(&self.state.faults).clear();
    }

    /// Delays every request by `latency` before handling it.
    pub fn set_latency(&self, latency: Duration) {
        *lock(&self.state.latency) = latency;
    }

    /// Requests received so far, faulted ones included.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// The requests received so far, in order.
    pub fn seen(&self) -> Vec<SeenRequest> {
        lock(&self.state.seen).clone()
    }

    /// Response bytes (headers and bodies) passed from the upstream to clients.
    pub fn bytes_to_client(&self) -> u64 {
        self.state.bytes_to_client.load(Ordering::Relaxed)
    }

    /// Request bytes (headers and bodies) passed from clients to the upstream.
    pub fn bytes_to_upstream(&self) -> u64 {
        self.state.bytes_to_upstream.load(Ordering::Relaxed)
    }

    /// Sets the request and byte counters to zero and forgets the requests seen.
    pub fn reset_counters(&self) {
        self.state.requests.store(0, Ordering::Relaxed);
        self.state.bytes_to_client.store(0, Ordering::Relaxed);
        self.state.bytes_to_upstream.store(0, Ordering::Relaxed);
        lock(&self.state.seen).clear();
    }

    /// Stops accepting and closes open connections.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            if let Err(err) = task.await {
                tracing::warn!(error = %err, "fault proxy task failed");
            }
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    let state = Arc::clone(&state);
                    connections.spawn(async move {
                        if let Err(err) = handle(socket, &state).await {
                            tracing::debug!(error = %err, "fault proxy connection failed");
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!(error = %err, "fault proxy cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// The longest request or response head accepted.
const MAX_HEAD: usize = 64 * 1024;

const SLOW_DOWN_BODY: &str =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
<Message>Please reduce your request rate.</Message><RequestId>fault-proxy</RequestId></Error>";

/// Serves one client connection: one request, then close.
async fn handle(mut client: TcpStream, state: &State) -> io::Result<()> {
    let mut buf = Vec::with_capacity(8 * 1024);
    let Some(head_len) = read_head(&mut client, &mut buf).await? else {
        return Ok(()); // closed before sending a request
    };
    let head = Head::parse(&buf[..head_len])?;
    state.requests.fetch_add(1, Ordering::Relaxed);
    let fault = state.take_fault(&head.method);
    lock(&state.seen).push(SeenRequest {
        method: head.method.clone(),
        target: head.target.clone(),
        headers: head.headers.clone(),
        fault,
    });
    let latency = *lock(&state.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    match fault {
        Some(Fault::Reset) => {
            client.set_zero_linger()?;
            drop(client);
            Ok(())
        }
        Some(Fault::SlowDown) => {
            drain_body(&mut client, &head, buf.len() - head_len).await;
            let body = if head.method == "HEAD" {
                ""
            } else {
                SLOW_DOWN_BODY
            };
            let answer = format!(
                "HTTP/1.1 503 Slow Down\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                SLOW_DOWN_BODY.len()
            );
            client.write_all(answer.as_bytes()).await?;
            client.shutdown().await
        }
        Some(Fault::Status(status)) => {
            drain_body(&mut client, &head, buf.len() - head_len).await;
            let (code, reason) = match status {
                500 => ("InternalError", "Internal Server Error"),
                503 => ("ServiceUnavailable", "Service Unavailable"),
                _ => ("InjectedFault", "Injected Fault"),
            };
            let error_body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
<Message>Injected by the fault proxy.</Message><RequestId>fault-proxy</RequestId></Error>"
            );
            let body = if head.method == "HEAD" {
                ""
            } else {
                error_body.as_str()
            };
            let answer = format!(
                "HTTP/1.1 {status} {reason}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                error_body.len()
            );
            client.write_all(answer.as_bytes()).await?;
            client.shutdown().await
        }
        Some(Fault::CutBody(after)) => {
            forward(client, &buf, head_len, &head, Some(after), state).await
        }
        None => forward(client, &buf, head_len, &head, None, state).await,
    }
}

/// Forwards the request on a new upstream connection and the response back, closing the
/// client connection after `cut` body bytes if given.
async fn forward(
    client: TcpStream,
    buf: &[u8],
    head_len: usize,
    head: &Head,
    cut: Option<u64>,
    state: &State,
) -> io::Result<()> {
    let mut upstream = TcpStream::connect(state.upstream).await?;
    let mut out = format!("{} {} {}\r\n", head.method, head.target, head.version);
    for (name, value) in &head.headers {
        if name != "connection" && name != "keep-alive" {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str("connection: close\r\n\r\n");
    upstream.write_all(out.as_bytes()).await?;
    upstream.write_all(&buf[head_len..]).await?;
    state
        .bytes_to_upstream
        .fetch_add(buf.len() as u64, Ordering::Relaxed);

    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let up = copy_counting(
        &mut client_read,
        &mut upstream_write,
        &state.bytes_to_upstream,
    );
    let down = relay_response(&mut upstream_read, &mut client_write, cut, state);
    tokio::pin!(up, down);
    tokio::select! {
        result = &mut down => result,
        // The client is done sending (or gone); the response still has to come back.
        _ = &mut up => down.await,
    }
}

/// Copies the response to the client, stopping after `cut` body bytes if given.
async fn relay_response(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    cut: Option<u64>,
    state: &State,
) -> io::Result<()> {
    let mut head = Vec::new();
    let mut head_len = None;
    let mut body_sent: u64 = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut chunk).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        let mut data = &chunk[..n];
        if head_len.is_none() {
            head.extend_from_slice(data);
            match find(&head, b"\r\n\r\n") {
                Some(pos) => {
                    let len = pos + 4;
                    head_len = Some(len);
                    to.write_all(&head[..len]).await?;
                    state
                        .bytes_to_client
                        .fetch_add(len as u64, Ordering::Relaxed);
                    let already = head.len() - len;
                    data = &chunk[n - already..n];
                }
                None if head.len() > MAX_HEAD => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "upstream response head too long",
                    ))
                }
                None => continue,
            }
        }
        let allowed = match cut {
            Some(limit) => usize::try_from(limit.saturating_sub(body_sent))
                .unwrap_or(usize::MAX)
                .min(data.len()),
            None => data.len(),
        };
        to.write_all(&data[..allowed]).await?;
        body_sent += allowed as u64;
        state
            .bytes_to_client
            .fetch_add(allowed as u64, Ordering::Relaxed);
        if cut.is_some_and(|limit| body_sent >= limit) {
            to.flush().await?;
            // Close mid-body: the client sees fewer bytes than Content-Length announced.
            return to.shutdown().await;
        }
    }
}

async fn copy_counting(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    counter: &AtomicU64,
) -> io::Result<()> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&chunk[..n]).await?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Reads until the end of the request head; returns its length (`buf` may hold body bytes
/// after it), or `None` if the client closed first.
async fn read_head(client: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    let mut chunk = [0u8; 8 * 1024];
    loop {
        if let Some(pos) = find(buf, b"\r\n\r\n") {
            return Ok(Some(pos + 4));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads and discards the rest of the request body (as announced by `Content-Length`) so that
/// answering early does not reset the connection under the client. Bounded in time.
async fn drain_body(client: &mut TcpStream, head: &Head, already: usize) {
    let expects_continue = head
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let Some(length) = head
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    if expects_continue {
        return;
    }
    let mut remaining = length.saturating_sub(already as u64);
    let mut chunk = vec![0u8; 64 * 1024];
    let drain = async {
        while remaining > 0 {
            match client.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => remaining = remaining.saturating_sub(n as u64),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A parsed HTTP/1.1 request head.
struct Head {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn parse(raw: &[u8]) -> io::Result<Self> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        let text = std::str::from_utf8(raw).map_err(|_| bad("request head is not utf-8"))?;
        let mut lines = text.split("\r\n");
        let request_line = lines.next().ok_or_else(|| bad("empty request"))?;
        let mut parts = request_line.split(' ');
        let (Some(method), Some(target), Some(version)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("bad request line"));
        };
        let headers = lines
            .filter(|line| !line.is_empty())
            .map(|line| {
                let (name, value) = line.split_once(':').ok_or_else(|| bad("bad header line"))?;
                Ok((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            method: method.to_owned(),
            target: target.to_owned(),
            version: version.to_owned(),
            headers,
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}
