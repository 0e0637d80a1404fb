//! The servers' accept loop (control node and DNS node): a connection bound, a task per
//! session spawned at once (the loop never waits on a peer), accept errors classified, and a
//! bounded drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Bounds and counters of one accept loop.
#[derive(Debug)]
pub struct AcceptLoop<'a> {
    /// Most concurrent sessions; further connections are closed at accept.
    pub max_connections: usize,
    /// How long shutdown waits for sessions to close.
    pub drain_timeout: Duration,
    /// Ends the loop.
    pub shutdown: &'a CancellationToken,
    /// Counts accepted connections.
    pub accepted: &'a AtomicU64,
    /// Counts connections closed because of `max_connections`.
    pub refused: &'a AtomicU64,
    /// Logged with the listening address.
    pub tls: bool,
}

impl AcceptLoop<'_> {
    /// Accepts until shutdown, running `session` for each connection in its own task,
    /// then waits (bounded by `drain_timeout`) for the sessions to end.
    pub async fn run<F, Fut>(self, listener: TcpListener, session: F)
    where
        F: Fn(TcpStream, SocketAddr) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.max_connections));
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, tls = self.tls, "XMPP server listening");
        }
        loop {
            let accepted = tokio::select! {
                () = self.shutdown.cancelled() => break,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((tcp, addr)) => {
                    self.accepted.fetch_add(1, Ordering::Relaxed);
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        self.refused.fetch_add(1, Ordering::Relaxed);
                        warn!(peer = %addr, limit = self.max_connections,
                            "connection refused: xmpp_max_connections reached");
                        drop(tcp);
                        continue;
                    };
                    let fut = session(tcp, addr);
                    tracker.spawn(async move {
                        fut.await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning; anything
                    // else concerns one connection only.
                    warn!(error = %e, "accept failed");
                    if matches!(e.raw_os_error(), Some(23 | 24 | 12 | 105)) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        drop(listener);
        tracker.close();
        if tokio::time::timeout(self.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            warn!("sessions did not close within the drain timeout");
        }
    }
}
