//! The sandbox: a faithful local emulator of ngrok's side of Kubernetes bindings, so bindgate
//! can be tried, tested end to end and benchmarked without an ngrok account.
//!
//! [`Sandbox::start`] binds everything (built-in backends, the binding ingress, the API when
//! configured) and returns once every listener accepts. Submodules: `config` (sandbox.yaml),
//! `ca` (the persisted CA), `endpoints` (the registry of bound endpoints), `ingress` (mTLS +
//! upgrade + pipe; `h2` serves the same upgrade as HTTP/2 CONNECT streams when the client
//! negotiates ALPN `h2`), `raw_echo` (the same mTLS check, then an echo, for generic TLS proxies
//! in benchmarks), `api` (the emulated ngrok API and `/sandbox/*` admin routes), `backends`
//! (echo, http), `faults` (per-endpoint fault knobs), `tls` (its crypto provider and key
//! reading). The sandbox shares nothing with bindgate's proxy side except the wire format (the
//! `bindgate-wire` crate): it is written from PROTOCOL.md alone, and this crate must never depend
//! on `bindgate`.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod api;
pub mod backends;
pub mod ca;
pub mod config;
pub mod config_docs;
pub mod endpoints;
pub mod faults;
pub mod h2;
pub mod ingress;
pub mod raw_echo;
pub mod tls;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use api::{Api, ApiStats};
pub use backends::{EchoBackend, HttpBackend};
pub use ca::{CaError, ClientAuth, SandboxCa, SignedCert};
pub use config::{SandboxConfig, SandboxConfigError};
pub use endpoints::{BoundEndpoint, EndpointError, EndpointRegistry, EndpointUrl, Target};
pub use faults::Faults;
pub use ingress::Ingress;
pub use raw_echo::RawEcho;

/// File names [`Sandbox::issue_client_cert`] writes.
pub const CLIENT_CERT_FILE: &str = "tls.crt";
pub const CLIENT_KEY_FILE: &str = "tls.key";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Config(#[from] SandboxConfigError),
    #[error("sandbox CA: {0}")]
    Ca(#[from] CaError),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("{what}: bind {address}: {source}")]
    Bind {
        what: &'static str,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running sandbox. Dropping it stops its listeners and connections; [`Sandbox::shutdown`]
/// also waits until they are gone.
#[derive(Debug)]
pub struct Sandbox {
    config: SandboxConfig,
    ca: Arc<SandboxCa>,
    registry: Arc<EndpointRegistry>,
    ingress_addr: SocketAddr,
    echo_addr: SocketAddr,
    http_addr: SocketAddr,
    api: Option<Arc<Api>>,
    api_addr: Option<SocketAddr>,
    raw_echo_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Sandbox {
    /// Loads or creates the CA, binds the backends and the ingress, and returns when all accept.
    pub async fn start(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        config
            .validate()
            .map_err(|(field, reason)| SandboxConfigError::Invalid {
                origin: "sandbox config".into(),
                field,
                reason,
            })?;
        let ca = Arc::new(SandboxCa::load_or_create(&config.state_dir)?);
        let shutdown = CancellationToken::new();
        // Should a later bind fail, the listeners already spawned stop with it.
        let stop_on_error = shutdown.clone().drop_guard();
        let mut tasks = Vec::new();

        let echo = bind("echo backend", config.backends.echo).await?;
        let echo_addr = local_addr("echo backend", config.backends.echo, &echo)?;
        tasks.push(spawn_accept_loop(echo, shutdown.clone(), |tcp, peer| {
            EchoBackend.serve(tcp, peer)
        }));
        let http = bind("http backend", config.backends.http).await?;
        let http_addr = local_addr("http backend", config.backends.http, &http)?;
        tasks.push(spawn_accept_loop(http, shutdown.clone(), |tcp, peer| {
            HttpBackend.serve(tcp, peer)
        }));

        let registry = Arc::new(EndpointRegistry::new(
            echo_addr,
            http_addr,
            &config.endpoints,
        )?);
        // The ingress's TLS, for a port bound at `ip`: its server certificate names, the client
        // certificate check, and as many session tickets per handshake as Go's server sends.
        let ingress_server_tls = |ip: IpAddr| -> Result<rustls::ServerConfig, SandboxError> {
            let mut tls = ca.server_tls(
                &config.ingress.server_names,
                &certificate_ips(ip),
                ClientAuth::Required,
            )?;
            tls.send_tls13_tickets = config.ingress.tls13_tickets;
            Ok(tls)
        };
        let listener = bind("ingress", config.ingress.address).await?;
        let ingress_addr = local_addr("ingress", config.ingress.address, &listener)?;
        let mut ingress_tls = ingress_server_tls(ingress_addr.ip())?;
        if config.ingress.h2 {
            ingress_tls.alpn_protocols = vec![b"h2".to_vec()];
        }
        let ingress = Arc::new(
            Ingress::new(
                Arc::new(ingress_tls),
                Arc::clone(&ca),
                config.account_id.clone(),
                Arc::clone(&registry),
                config.ingress.handshake_timeout.get(),
            )
            .with_h2_goaway_after_streams(config.ingress.h2_goaway_after_streams),
        );
        tasks.push(spawn_accept_loop(
            listener,
            shutdown.clone(),
            move |tcp, peer| Arc::clone(&ingress).serve(tcp, peer),
        ));
        let raw_echo_addr = match &config.raw_echo {
            Some(raw) => {
                let listener = bind("raw echo", raw.address).await?;
                let addr = local_addr("raw echo", raw.address, &listener)?;
                // The ingress's TLS; no ALPN, no upgrade.
                let tls = ingress_server_tls(addr.ip())?;
                let raw_echo = Arc::new(RawEcho::new(
                    Arc::new(tls),
                    Arc::clone(&ca),
                    config.account_id.clone(),
                    config.ingress.handshake_timeout.get(),
                ));
                tasks.push(spawn_accept_loop(
                    listener,
                    shutdown.clone(),
                    move |tcp, peer| Arc::clone(&raw_echo).serve(tcp, peer),
                ));
                info!("sandbox raw mTLS echo listening on {addr}");
                Some(addr)
            }
            None => None,
        };
        let (api, api_addr) = match &config.api {
            Some(api_config) => {
                let listener = bind("api", api_config.address).await?;
                let api_addr = local_addr("api", api_config.address, &listener)?;
                let api_tls = ca.server_tls(
                    &config.ingress.server_names,
                    &certificate_ips(api_addr.ip()),
                    ClientAuth::None,
                )?;
                let api = Arc::new(Api::new(
                    api_config,
                    api_tls,
                    api_addr,
                    ingress_addr,
                    config.account_id.clone(),
                    Arc::clone(&ca),
                    Arc::clone(&registry),
                ));
                let serving = Arc::clone(&api);
                tasks.push(spawn_accept_loop(
                    listener,
                    shutdown.clone(),
                    move |tcp, peer| Arc::clone(&serving).serve(tcp, peer),
                ));
                info!("sandbox api listening on {}", api.base_url());
                (Some(api), Some(api_addr))
            }
            None => (None, None),
        };
        info!(
            "sandbox ingress listening on {ingress_addr} (account {}, {} endpoints; echo backend {echo_addr}, http backend {http_addr}; CA {})",
            config.account_id,
            config.endpoints.len(),
            absolute(ca.cert_path()).display()
        );
        stop_on_error.disarm();
        Ok(Sandbox {
            config,
            ca,
            registry,
            ingress_addr,
            echo_addr,
            http_addr,
            api,
            api_addr,
            raw_echo_addr,
            shutdown,
            tasks,
        })
    }

    pub fn ingress_addr(&self) -> SocketAddr {
        self.ingress_addr
    }

    /// `(echo, http)`.
    pub fn backend_addrs(&self) -> (SocketAddr, SocketAddr) {
        (self.echo_addr, self.http_addr)
    }

    /// The CA certificate clients must trust, as an absolute path.
    pub fn ca_pem_path(&self) -> PathBuf {
        absolute(self.ca.cert_path())
    }

    pub fn ca(&self) -> &SandboxCa {
        &self.ca
    }

    pub fn account_id(&self) -> &str {
        &self.config.account_id
    }

    /// The live endpoint registry.
    pub fn endpoints(&self) -> &EndpointRegistry {
        &self.registry
    }

    /// The API's bound address, when the config has an `api` section.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// The raw mTLS echo port's bound address, when the config has a `raw_echo` section.
    pub fn raw_echo_addr(&self) -> Option<SocketAddr> {
        self.raw_echo_addr
    }

    /// `https://127.0.0.1:PORT`, what bindgate's `ngrok.api_url` should be.
    pub fn api_url(&self) -> Option<String> {
        self.api.as_ref().map(|api| api.base_url().to_string())
    }

    /// The API server, when configured.
    pub fn api(&self) -> Option<&Api> {
        self.api.as_deref()
    }

    /// Successful `POST /kubernetes_operators` so far (0 without an API).
    pub fn registrations(&self) -> u64 {
        self.api.as_ref().map_or(0, |api| api.registrations())
    }

    /// Adds an endpoint at run time; the ingress serves it and the API lists it at once.
    pub fn add_endpoint(
        &self,
        url: &str,
        target: &str,
    ) -> Result<Arc<BoundEndpoint>, EndpointError> {
        self.registry.add(&config::EndpointConfig {
            url: url.to_string(),
            target: target.to_string(),
            faults: config::FaultsConfig::default(),
        })
    }

    /// Removes an endpoint at run time; new upgrades for it get `ERR_NGROK_3200`, connections
    /// already piped continue.
    pub fn remove_endpoint(&self, url: &str) -> Result<Arc<BoundEndpoint>, EndpointError> {
        self.registry.remove(url)
    }

    /// Writes a client certificate for the sandbox's account into `out_dir`: `tls.crt` (0644)
    /// and `tls.key` (0600). Returns their paths.
    pub fn issue_client_cert(&self, out_dir: &Path) -> Result<(PathBuf, PathBuf), SandboxError> {
        write_client_cert(&self.ca, &self.config.account_id, out_dir)
    }

    /// Stops accepting, aborts connections in flight, and waits for the listeners to close.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Issues a client certificate for `account_id` into `out_dir` (`tls.crt` 0644, `tls.key` 0600).
pub fn write_client_cert(
    ca: &SandboxCa,
    account_id: &str,
    out_dir: &Path,
) -> Result<(PathBuf, PathBuf), SandboxError> {
    std::fs::create_dir_all(out_dir).map_err(|source| SandboxError::Io {
        path: out_dir.to_owned(),
        source,
    })?;
    let (cert_pem, key_pem) = ca.issue_client_cert(account_id)?;
    let cert_path = absolute(&out_dir.join(CLIENT_CERT_FILE));
    let key_path = absolute(&out_dir.join(CLIENT_KEY_FILE));
    ca::write_file(&key_path, key_pem.as_bytes(), 0o600)?;
    ca::write_file(&cert_path, cert_pem.as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// The address clients dial to reach a listener bound to `addr`: a wildcard bind is reached
/// over loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

/// IP SANs for a server certificate bound to `ip`: a wildcard bind is reached over loopback.
fn certificate_ips(ip: IpAddr) -> Vec<IpAddr> {
    if ip.is_unspecified() {
        vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]
    } else {
        vec![ip]
    }
}

/// Accept queue of the sandbox's listeners. Benchmarks and multiplexed tests open bursts of a
/// thousand connections to a backend at once; tokio's default of 1024 overflows under CPU
/// contention, and an overflowed queue ends in a reset connection. The kernel caps it at
/// `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(what: &'static str, address: SocketAddr) -> Result<TcpListener, SandboxError> {
    let listen = || {
        let socket = match address {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        // As tokio's `TcpListener::bind` does: a restarted sandbox rebinds its fixed ports.
        socket.set_reuseaddr(true)?;
        socket.bind(address)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|source| SandboxError::Bind {
        what,
        address,
        source,
    })
}

fn local_addr(
    what: &'static str,
    address: SocketAddr,
    listener: &TcpListener,
) -> Result<SocketAddr, SandboxError> {
    listener.local_addr().map_err(|source| SandboxError::Bind {
        what,
        address,
        source,
    })
}

/// Accepts until `shutdown` fires, one task per connection; connection tasks are aborted when
/// the loop ends.
fn spawn_accept_loop<F, Fut>(
    listener: TcpListener,
    shutdown: CancellationToken,
    serve: F,
) -> JoinHandle<()>
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        connections.spawn(serve(tcp, peer));
                    }
                    Err(e) => {
                        // Per-connection failures (ECONNABORTED) and resource exhaustion
                        // (EMFILE) both land here; pause briefly so the latter cannot spin.
                        warn!("accept on {:?} failed: {e}", listener.local_addr().ok());
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        connections.shutdown().await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_binds_get_loopback_ip_sans() {
        assert_eq!(
            certificate_ips("0.0.0.0".parse().unwrap()),
            vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            ]
        );
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(certificate_ips(ip), vec![ip]);
    }
}
