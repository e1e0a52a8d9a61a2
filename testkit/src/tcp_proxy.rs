//! [`TcpProxy`]: a TCP relay that can be partitioned, for tests of a process cut off from a
//! server (PostgreSQL, say) while everything else it talks to still answers.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Relays TCP connections from `127.0.0.1:0` to one upstream address. While
/// [`partition`](Self::partition)ed, no byte moves either way and new connections are held
/// before they reach the upstream, but nothing is closed: the link has gone dark, as when a
/// network path fails, and a client notices only by its own timeouts. [`heal`](Self::heal)
/// lets the held bytes through, in order, as TCP's retransmissions would.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    dark: watch::Sender<bool>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Listens on a free loopback port and relays to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (dark, watching) = watch::channel(false);
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept(listener, upstream, watching, stop.clone()));
        Ok(TcpProxy {
            addr,
            dark,
            stop,
            task: Some(task),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `url` (`scheme://[user@]host:port/...`) with its host and port replaced by this
    /// proxy's.
    pub fn url_through(&self, url: &str) -> String {
        let authority_start = url.find("://").map_or(0, |i| i + 3);
        let authority_end = url[authority_start..]
            .find(['/', '?'])
            .map_or(url.len(), |i| i + authority_start);
        let host_start = url[authority_start..authority_end]
            .rfind('@')
            .map_or(authority_start, |i| authority_start + i + 1);
        format!(
            "{}{}{}",
            &url[..host_start],
            self.addr,
            &url[authority_end..]
        )
    }

    /// Stops every byte, both ways, until [`heal`](Self::heal).
    pub fn partition(&self) {
        self.dark.send_replace(true);
    }

    /// Lets bytes flow again.
    pub fn heal(&self) {
        self.dark.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    dark: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let mut relays = JoinSet::new();
    loop {
        let client = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => continue,
            },
            Some(_) = relays.join_next(), if !relays.is_empty() => continue,
        };
        let dark = dark.clone();
        relays.spawn(async move {
            let mut waiting = dark.clone();
            if waiting.wait_for(|dark| !dark).await.is_err() {
                return;
            }
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            client.set_nodelay(true).ok();
            server.set_nodelay(true).ok();
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                relay(client_read, server_write, dark.clone()),
                relay(server_read, client_write, dark),
            );
        });
    }
}

/// Copies `from` to `to` until `from` ends, holding each chunk while the link is dark.
async fn relay(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut dark: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if dark.wait_for(|dark| !dark).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    to.shutdown().await.ok();
}
