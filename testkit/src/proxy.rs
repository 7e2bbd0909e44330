//! TCP proxies that cut connections the way an outage would.

use crate::{io, Error};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A listener for a proxy on a free loopback port, and the port.
async fn proxy_listener() -> Result<(tokio::net::TcpListener, u16), Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(io("binding the proxy"))?;
    let port = listener
        .local_addr()
        .map_err(io("reading the proxy port"))?
        .port();
    Ok((listener, port))
}

/// A TCP proxy on a free loopback port, for cutting a connection the way a network or server
/// outage would: [`TcpProxy::cut`] drops every open connection and refuses new ones until
/// [`TcpProxy::restore`].
pub struct TcpProxy {
    pub port: u16,
    state: std::sync::Arc<ProxyState>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    down: std::sync::atomic::AtomicBool,
    connections: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl TcpProxy {
    /// Forwards connections to `target` (a loopback address).
    pub async fn start(target: std::net::SocketAddr) -> Result<TcpProxy, Error> {
        let (listener, port) = proxy_listener().await?;
        let state = std::sync::Arc::new(ProxyState::default());
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if accept_state.down.load(Ordering::SeqCst) {
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                accept_state
                    .connections
                    .lock()
                    .expect("proxy lock")
                    .push(task.abort_handle());
            }
        });
        Ok(TcpProxy {
            port,
            state,
            accept,
        })
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.state.down.store(true, Ordering::SeqCst);
        for connection in self.state.connections.lock().expect("proxy lock").drain(..) {
            connection.abort();
        }
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.state.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// A TCP proxy to PostgreSQL that, when armed, loses the answer to a COMMIT: it forwards the
/// client's `COMMIT`, gives the server a moment to carry it out, and closes both sides before
/// anything comes back. The client cannot tell whether its transaction committed; this is the
/// case that tests whether a retried write duplicates.
pub struct CommitCutter {
    pub port: u16,
    armed: std::sync::Arc<AtomicU32>,
    cuts: std::sync::Arc<AtomicU32>,
    accept: tokio::task::JoinHandle<()>,
}

/// How long the server has to carry out a COMMIT before the connection is closed.
const COMMIT_GRACE: Duration = Duration::from_millis(200);

impl CommitCutter {
    /// Forwards connections to `target` (a loopback address).
    pub async fn start(target: std::net::SocketAddr) -> Result<CommitCutter, Error> {
        let (listener, port) = proxy_listener().await?;
        let armed = std::sync::Arc::new(AtomicU32::new(0));
        let cuts = std::sync::Arc::new(AtomicU32::new(0));
        let (task_armed, task_cuts) = (armed.clone(), cuts.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (armed, cuts) = (task_armed.clone(), task_cuts.clone());
                tokio::spawn(async move {
                    if let Ok(outbound) = tokio::net::TcpStream::connect(target).await {
                        relay_until_commit(inbound, outbound, &armed, &cuts).await;
                    }
                });
            }
        });
        Ok(CommitCutter {
            port,
            armed,
            cuts,
            accept,
        })
    }

    /// Cuts the next `n` commits, on whichever connections they come.
    pub fn arm(&self, n: u32) {
        self.armed.fetch_add(n, Ordering::SeqCst);
    }

    /// Commits cut so far.
    pub fn cuts(&self) -> u32 {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for CommitCutter {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Relays one connection both ways until an armed cut meets a COMMIT from the client.
async fn relay_until_commit(
    inbound: tokio::net::TcpStream,
    outbound: tokio::net::TcpStream,
    armed: &AtomicU32,
    cuts: &AtomicU32,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_read, mut client_write) = inbound.into_split();
    let (mut server_read, mut server_write) = outbound.into_split();
    let answers = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match client_read.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buffer[..n];
        // tokio-postgres commits with a simple query: 'Q', a length, "COMMIT", NUL.
        let commit = chunk.windows(7).any(|w| w == b"COMMIT\0");
        let cut = commit
            && armed
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if cut {
            // Nothing the server says from here on reaches the client.
            answers.abort();
        }
        if server_write.write_all(chunk).await.is_err() {
            break;
        }
        if cut {
            tokio::time::sleep(COMMIT_GRACE).await;
            cuts.fetch_add(1, Ordering::SeqCst);
            break;
        }
    }
    answers.abort();
}
