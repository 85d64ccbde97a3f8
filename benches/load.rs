//! The load benchmark: bindgate's ingress transports side by side, in one run, against the
//! sandbox, with HAProxy and stunnel making the same mTLS hop when they are installed; and
//! bindgate's http listener beside HAProxy in front of one nginx (`http_peers`, when nginx is
//! installed). See `benches/README.md`.
//!
//! ```sh
//! cargo bench --bench load                      # the full run (under two minutes)
//! cargo bench --bench load -- --quick           # tiny counts: seconds, a smoke run
//! cargo bench --bench load -- --json target/bench-results.json
//! cargo bench --bench load -- --rtt 20          # 20 ms emulated between gateways and ingress
//! cargo bench --bench load -- --only connect,paced --targets direct,pool
//! cargo bench --bench load -- --only http_peers # http proxies in front of nginx
//! ```
//!
//! Which `bindgate` is measured: `BINDGATE_BIN` when set, else the one cargo builds for this
//! bench (`CARGO_BIN_EXE_bindgate`). The latter is optimized (the bench profile inherits
//! `release`) but is not quite the release binary: cargo compiles it with the dev-dependencies'
//! features, so tokio's `test-util` clock hooks are in it. For release numbers (the README's),
//! measure a copy of `cargo build --release`'s binary (a copy, because `cargo bench` rewrites
//! `target/release/bindgate` with its own build):
//!
//! ```sh
//! cargo build --release && cp target/release/bindgate target/bindgate-release
//! BINDGATE_BIN=target/bindgate-release cargo bench --bench load -- --json target/bench-results.json
//! ```

#[path = "harness/mod.rs"]
mod harness;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: cargo bench --bench load -- [--quick] [--json FILE] [--rtt MS] \
[--only connect,paced,short,http,throughput,http_peers] \
[--targets baseline,direct,direct+resume,pool,multiplex,pool+early,multiplex+early,haproxy,stunnel]";

struct Args {
    quick: bool,
    json: Option<PathBuf>,
    rtt: Option<Duration>,
    only: Option<String>,
    targets: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        json: None,
        rtt: None,
        only: None,
        targets: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--json" => {
                let path = it.next().ok_or("--json needs a FILE")?;
                args.json = Some(PathBuf::from(path));
            }
            "--rtt" => {
                let ms = it.next().ok_or("--rtt needs a round-trip time in ms")?;
                let ms: u64 = ms
                    .parse()
                    .map_err(|_| format!("--rtt: `{ms}` is not a whole number of milliseconds"))?;
                if !(1..=10_000).contains(&ms) {
                    return Err(
                        "--rtt: from 1 to 10000 ms (timers are ms-granular: 5 or more \
                                is meaningful)"
                            .to_owned(),
                    );
                }
                args.rtt = Some(Duration::from_millis(ms));
            }
            "--only" => args.only = Some(it.next().ok_or("--only needs a LIST")?),
            "--targets" => args.targets = Some(it.next().ok_or("--targets needs a LIST")?),
            // `cargo bench` passes `--bench` to every bench binary.
            "--bench" => {}
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let (bin, origin) = harness::bindgate_under_test();
    let mut settings = harness::Settings::new(bin, origin, args.quick);
    if let Some(rtt) = args.rtt {
        settings = settings.with_rtt(rtt);
    }
    if let Err(e) = settings.select(args.only.as_deref(), args.targets.as_deref()) {
        eprintln!("{e}\n{USAGE}");
        return ExitCode::FAILURE;
    }
    // Two workers, like the machine the README's numbers come from: the load generator shares
    // the CPUs with the gateways and the sandbox either way.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "bindgate load benchmark ({}{}), binary {}",
        if args.quick { "quick" } else { "full" },
        settings
            .rtt
            .map(|d| format!(", RTT {} ms via relay", d.as_millis()))
            .unwrap_or_default(),
        settings.bin.display()
    );
    let report = match runtime.block_on(harness::run(&settings)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("load benchmark failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("\n{}", report.table());
    for f in report.failures() {
        println!("failed operations: {f}");
    }
    if let Some(path) = &args.json {
        let written = serde_json::to_string_pretty(&report)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
                }
                std::fs::write(path, text + "\n").map_err(|e| e.to_string())
            });
        match written {
            Ok(()) => println!("JSON written to {}", path.display()),
            Err(e) => {
                eprintln!("cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    let missing = report.missing_numbers();
    if !missing.is_empty() {
        eprintln!("no numbers for: {}", missing.join(", "));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
