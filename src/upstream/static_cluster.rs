//! `static` clusters: plain TCP to fixed `host:port` addresses, round-robin.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;

use super::{UpstreamError, UpstreamStream};

#[derive(Debug)]
pub struct StaticEndpoints {
    pub addresses: Vec<String>,
    pub connect_timeout: Duration,
    next: AtomicUsize,
}

impl StaticEndpoints {
    pub fn new(addresses: Vec<String>, connect_timeout: Duration) -> Self {
        StaticEndpoints {
            addresses,
            connect_timeout,
            next: AtomicUsize::new(0),
        }
    }

    /// Connects to the next address in turn (a retry therefore tries the next one).
    pub async fn connect(&self) -> Result<UpstreamStream, UpstreamError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.addresses.len().max(1);
        let Some(addr) = self.addresses.get(i) else {
            return Err(UpstreamError::NoEndpoints);
        };
        // Bounded by the connect stack's timeout layer (`connect_timeout`).
        match TcpStream::connect(addr.as_str()).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                Ok(UpstreamStream::Tcp(tcp))
            }
            Err(source) => Err(UpstreamError::Connect {
                addr: addr.clone(),
                source,
            }),
        }
    }
}
