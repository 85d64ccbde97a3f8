//! `bindgate sandbox`: run the local ngrok emulator, or issue a client certificate from its CA.
//!
//! Once the sandbox is ready, exactly one JSON line goes to stdout (`{"event":"ready",...}`) so
//! scripts and tests wait on it instead of sleeping; human logs go to stderr.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use bindgate_sandbox::{self as sandbox, Sandbox, SandboxCa, SandboxConfig};

#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    /// The sandbox config (sandbox.yaml).
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Option<SandboxCommand>,
}

#[derive(Debug, clap::Subcommand)]
pub enum SandboxCommand {
    /// Issue a client certificate and key for the sandbox's account (for static setups).
    ClientCert {
        /// Directory to write tls.crt and tls.key into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

pub async fn run(args: SandboxArgs) -> anyhow::Result<()> {
    let config = SandboxConfig::load(&args.config)?;
    match args.command {
        Some(SandboxCommand::ClientCert { out }) => client_cert(&config, &out),
        None => serve(config).await,
    }
}

fn client_cert(config: &SandboxConfig, out: &std::path::Path) -> anyhow::Result<()> {
    crate::identity::install_crypto_provider();
    let ca = SandboxCa::load_or_create(&config.state_dir)?;
    let (cert, key) = sandbox::write_client_cert(&ca, &config.account_id, out)?;
    let ca_path = std::path::absolute(ca.cert_path()).unwrap_or_else(|_| ca.cert_path().into());
    print_line(&serde_json::json!({
        "event": "client_cert",
        "account_id": config.account_id,
        "cert": cert,
        "key": key,
        "ca": ca_path,
    }))
}

async fn serve(config: SandboxConfig) -> anyhow::Result<()> {
    let mut signals = super::ShutdownSignal::install().context("installing signal handlers")?;
    let sandbox = Sandbox::start(config).await?;
    print_line(&ReadyLine::of(&sandbox))?;
    signals.recv().await;
    tracing::info!("sandbox shutting down");
    sandbox.shutdown().await;
    Ok(())
}

/// The one line `bindgate sandbox` prints on stdout once every listener accepts. Field order is
/// part of the contract (a struct, not a map, keeps it).
#[derive(Debug, serde::Serialize)]
pub struct ReadyLine {
    pub event: &'static str,
    pub ingress: SocketAddr,
    pub ca: PathBuf,
    pub backends: ReadyBackends,
    /// `https://host:port` of the emulated API, when one is configured.
    pub api: Option<String>,
    /// The raw mTLS echo port (no upgrade), when one is configured.
    pub raw_echo: Option<SocketAddr>,
}

#[derive(Debug, serde::Serialize)]
pub struct ReadyBackends {
    pub echo: SocketAddr,
    pub http: SocketAddr,
}

impl ReadyLine {
    pub fn of(sandbox: &Sandbox) -> Self {
        let (echo, http) = sandbox.backend_addrs();
        ReadyLine {
            event: "ready",
            ingress: sandbox.ingress_addr(),
            ca: sandbox.ca_pem_path(),
            backends: ReadyBackends { echo, http },
            api: sandbox.api_url(),
            raw_echo: sandbox.raw_echo_addr(),
        }
    }
}

fn print_line(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let line = serde_json::to_string(value).context("encoding the JSON line")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").context("writing to stdout")?;
    stdout.flush().context("writing to stdout")
}
