//! The `bindgate` binary: argument parsing, logging, runtime, dispatch. No logic lives here.

use std::process::ExitCode;

use bindgate::cli;
use clap::{Parser, Subcommand};

/// mimalloc rather than the system allocator: a snapshot of 10,000 resources is built and freed
/// in a third of the time (`cargo bench --bench sources`), and freeing from other threads does
/// not contend.
#[global_allocator]
static ALLOCATOR: Mimalloc = Mimalloc;

/// mimalloc, asked the way Rust's own `System` allocator asks the C library: plain `mi_malloc`
/// when every block it could return is aligned enough, `mi_malloc_aligned` only otherwise.
/// (The `mimalloc` crate asks for every allocation through `mi_malloc_aligned`, which takes a
/// slower path for blocks over 1 KiB and some smaller ones: it cost 1,200 of the gateway's
/// instructions per kept-alive proxied HTTP request, 3 %, and 2,200 per request on a new
/// connection, 4.6 %, `benches/instructions.py`.)
struct Mimalloc;

/// The alignment of every block of 16 bytes or more that `mi_malloc` returns
/// (`MI_MAX_ALIGN_SIZE`: its size classes from 16 bytes up are multiples of 16). A smaller
/// block is aligned to its own size class, at least the size asked for rounded to 8.
const MIMALLOC_MIN_ALIGN: usize = 16;

impl Mimalloc {
    /// Whether `mi_malloc(size)` is aligned enough for `align`.
    #[inline]
    fn plain(size: usize, align: usize) -> bool {
        align <= MIMALLOC_MIN_ALIGN && align <= size
    }
}

// SAFETY: each method hands the call to mimalloc's function for it, which meets `GlobalAlloc`'s
// contract for the layout (alignment included: see `plain`); `mi_free` takes any block either
// family returned.
unsafe impl std::alloc::GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: no preconditions; null on failure, as `GlobalAlloc` wants.
        unsafe {
            if Self::plain(layout.size(), layout.align()) {
                libmimalloc_sys::mi_malloc(layout.size()).cast()
            } else {
                libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if Self::plain(layout.size(), layout.align()) {
                libmimalloc_sys::mi_zalloc(layout.size()).cast()
            } else {
                libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from this allocator (the caller's contract).
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (the caller's contract).
        // `mi_realloc` takes a block of either family; it keeps the block, which was aligned
        // for `layout`, or moves the bytes to a new `mi_malloc` block, aligned as `plain` says.
        unsafe {
            if Self::plain(new_size, layout.align()) {
                libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                libmimalloc_sys::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

/// The libm functions the binary calls (the metrics crates' quantile sketches and histograms
/// use `exp`, `log`, `log1p`, `log2` and `pow`), defined here in Rust (the `libm` crate, a port
/// of musl's) so that the linker resolves them in the binary and, with `--as-needed`, drops
/// `libm.so.6`. Mapping it cost an idle gateway about 0.5 MiB of resident memory: with eager
/// binding the loader runs the resolver of each function it imports, and each one faults in a
/// 64 KiB window of libm's code. GNU targets only: a static C library would define them too.
/// A dependency that starts calling another libm function brings `libm.so.6` back, which costs
/// memory, not correctness.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod libm_in_rust {
    #[unsafe(no_mangle)]
    extern "C" fn exp(x: f64) -> f64 {
        libm::exp(x)
    }

    #[unsafe(no_mangle)]
    extern "C" fn log(x: f64) -> f64 {
        libm::log(x)
    }

    #[unsafe(no_mangle)]
    extern "C" fn log1p(x: f64) -> f64 {
        libm::log1p(x)
    }

    #[unsafe(no_mangle)]
    extern "C" fn log2(x: f64) -> f64 {
        libm::log2(x)
    }

    #[unsafe(no_mangle)]
    extern "C" fn pow(x: f64, y: f64) -> f64 {
        libm::pow(x, y)
    }
}

const EXAMPLES: &str = "\
Examples:
  bindgate demo                               sandbox + proxy in one process; prints what to try
  bindgate validate -c gateway.yaml           check a config (CI: exit 0 valid, 1 errors, 2 usage)
  bindgate run -c gateway.yaml                serve it
  bindgate schema > bindgate.schema.json      the config's JSON Schema, for editors
  bindgate certs -c gateway.yaml show         the ngrok registration and client certificate
  bindgate identity issue -c gw.yaml --out /run/identity   write (or renew) a shared identity
  bindgate status -c gateway.yaml             readiness, listeners, clusters of a running instance";

#[derive(Parser)]
#[command(name = "bindgate", version, about = "Private access to ngrok Kubernetes-bound endpoints from ordinary hosts", after_help = EXAMPLES)]
struct Cli {
    /// Log filter (also read from BINDGATE_LOG), e.g. `info`, `debug`, `bindgate=debug`.
    #[arg(long, global = true, env = "BINDGATE_LOG", default_value = "info")]
    log: String,
    /// Worker threads (also BINDGATE_CONCURRENCY; default: one per CPU), like Envoy's
    /// `--concurrency`. Fewer leave cores to neighbours on a shared host.
    #[arg(long, global = true, env = "BINDGATE_CONCURRENCY")]
    concurrency: Option<std::num::NonZeroUsize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a config file until SIGINT/SIGTERM, then drain.
    Run(cli::run::RunArgs),
    /// Check a config file with the same build path as `run`; prints OK or every error.
    Validate(cli::validate::ValidateArgs),
    /// Print the config file's JSON Schema.
    Schema,
    /// Run a local emulator of ngrok's binding ingress, for trying and testing bindgate.
    Sandbox(cli::sandbox::SandboxArgs),
    /// Sandbox + proxy in one process, from the embedded demo configs; prints what to try.
    Demo(cli::demo::DemoArgs),
    /// Show, renew or remove this host's ngrok registration and client certificate.
    Certs(cli::certs::CertsArgs),
    /// The shared identity of a fleet: `identity issue` registers, adopts or renews it into a
    /// directory that replicas read through `ngrok.identity_dir`.
    Identity(cli::identity::IdentityArgs),
    /// Ask a running bindgate's admin API for readiness, listeners, clusters and endpoints.
    Status(cli::status::StatusArgs),
}

fn main() -> ExitCode {
    // First of all: a SIGHUP during start-up must not kill the process.
    let hangup = cli::early_hangup();
    cli::file_size_limit_is_an_error();
    cli::reopen_access_logs_on_usr1();
    bindgate::admin::set_memory_trim(|| {
        // SAFETY: `mi_collect` has no preconditions; it returns the free memory of the calling
        // thread's heap (and, forced, of abandoned ones) to the system.
        unsafe { libmimalloc_sys::mi_collect(true) }
    });
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let threads = cli.concurrency;
    match cli.command {
        Command::Validate(args) => cli::validate::run(&args),
        Command::Schema => {
            cli::schema::run();
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            bindgate::upstream::background::enable();
            block_on(threads, cli::run::run(args, hangup))
        }
        Command::Demo(args) => {
            bindgate::upstream::background::enable();
            block_on(threads, cli::demo::run(args))
        }
        Command::Sandbox(args) => block_on(threads, async {
            cli::sandbox::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Certs(args) => block_on(threads, cli::certs::run(args)),
        Command::Identity(args) => block_on(threads, cli::identity::run(args)),
        Command::Status(args) => block_on(threads, cli::status::run(args)),
    }
}

fn block_on(
    threads: Option<std::num::NonZeroUsize>,
    fut: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n.get());
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", bindgate::telemetry::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::Mimalloc;

    /// Every layout gets a block aligned for it, whichever of mimalloc's two families serves
    /// it: zeroed when asked, and its bytes kept by a reallocation, smaller or larger, that
    /// keeps the alignment.
    #[test]
    fn blocks_are_aligned_for_their_layout_through_alloc_zero_and_realloc() {
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 3, 8, 15, 16, 24, 40, 100, 1000, 1025, 4096, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                for new_size in [size / 2 + 1, size * 3] {
                    // SAFETY: the layouts have a non-zero size; each block is freed once,
                    // with the layout it has at that point.
                    unsafe {
                        let p = Mimalloc.alloc(layout);
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "alloc {size} align {align}");
                        p.write_bytes(0xa5, size);
                        let q = Mimalloc.realloc(p, layout, new_size);
                        assert!(!q.is_null());
                        assert_eq!(
                            q as usize % align,
                            0,
                            "realloc {size}→{new_size} align {align}"
                        );
                        let kept = std::slice::from_raw_parts(q, size.min(new_size));
                        assert!(kept.iter().all(|b| *b == 0xa5), "realloc {size}→{new_size}");
                        Mimalloc.dealloc(q, Layout::from_size_align(new_size, align).unwrap());
                    }
                }
                // SAFETY: as above.
                unsafe {
                    let z = Mimalloc.alloc_zeroed(layout);
                    assert!(!z.is_null());
                    assert_eq!(z as usize % align, 0, "alloc_zeroed {size} align {align}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                    Mimalloc.dealloc(z, layout);
                }
            }
        }
    }
}
