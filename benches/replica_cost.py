#!/usr/bin/env python3
"""What one bindgate replica costs: RSS at rest, RSS and CPU while serving a steady rate of new
connections, and the connections per second one core would carry at that cost.

It runs the real binary: `bindgate sandbox` (the ingress emulator with its echo backend) and one
`bindgate run` with a static listener whose cluster is the sandbox's echo endpoint through the
chosen transport. A client opens connections at a fixed rate (each sends 32 bytes, reads them
back and closes) for a fixed time; the gateway's CPU is its utime + stime from /proc/PID/stat
over that window. The client and the sandbox share the machine's cores with the gateway, so the
numbers are what the gateway itself spent, measured, not what the machine could do in total.

    python3 benches/replica_cost.py --bin target/release/bindgate [--rate 500] [--seconds 20]
        [--transports pool,multiplex,direct]

Loopback only; ports chosen by the OS; every wait is bounded.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

ECHO = "tcp://echo.bench:7000"
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    # After the command: state is field 3; utime and stime are fields 14 and 15.
    return (int(rest[11]) + int(rest[12])) / TICKS


def rss_mib(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / (1024 * 1024)


def start(args, label):
    """Starts a bindgate process and returns it with its first stdout line (a JSON event)."""
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        sys.exit(f"{label} exited before announcing readiness: {args}")
    return proc, json.loads(line)


async def one_connection(addr, payload):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*addr), 10)
    writer.write(payload)
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
    writer.close()
    await writer.wait_closed()
    return got == payload


async def drive(addr, rate, seconds):
    """Opens `rate` connections per second for `seconds`; returns (ok, failed)."""
    payload = os.urandom(32)
    tasks = []
    start_at = time.monotonic()
    n = int(rate * seconds)
    for i in range(n):
        due = start_at + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one_connection(addr, payload)))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    ok = sum(1 for r in results if r is True)
    return ok, n - ok


def measure(bin_path, sandbox, transport, rate, seconds, work):
    cfg = os.path.join(work, f"gateway-{transport}.yaml")
    with open(cfg, "w") as f:
        f.write(
            f"""version: 1
admin: {{ address: 127.0.0.1:0 }}
ingresses:
  - name: sandbox
    address: {sandbox['ingress']}
    server_name: localhost
    ca: {sandbox['ca']}
    system_roots: false
    client_cert: {work}/client/tls.crt
    client_key: {work}/client/tls.key
    transport: {transport}
static_resources:
  listeners:
    - name: echo
      address: 127.0.0.1:0
      routes: [ {{ cluster: echo }} ]
  clusters:
    - name: echo
      type: binding_upstream
      endpoint: {ECHO}
      ingress: sandbox
"""
        )
    gw, event = start([bin_path, "run", "-c", cfg], "bindgate run")
    try:
        listener = next(l for l in event["listeners"] if l["name"] == "echo")
        host, port = listener["bound_address"].rsplit(":", 1)
        addr = (host, int(port))
        # Warm up (pool fill, first handshakes), then let it settle.
        asyncio.run(drive(addr, min(rate, 50), 1))
        time.sleep(1)
        rest = rss_mib(gw.pid)
        cpu0, t0 = cpu_seconds(gw.pid), time.monotonic()
        ok, failed = asyncio.run(drive(addr, rate, seconds))
        cpu1, t1 = cpu_seconds(gw.pid), time.monotonic()
        busy = rss_mib(gw.pid)
        cpu = cpu1 - cpu0
        achieved = ok / (t1 - t0)
        per_thousand = cpu / (t1 - t0) / (achieved / 1000) if achieved else float("nan")
        return {
            "transport": transport,
            "rate": rate,
            "seconds": round(t1 - t0, 1),
            "ok": ok,
            "failed": failed,
            "cpu_s": round(cpu, 2),
            "cores_per_1000_cps": round(per_thousand, 3),
            "cps_per_core": round(1000 / per_thousand) if per_thousand else None,
            "cpu_ms_per_conn": round(cpu / ok * 1000, 3) if ok else None,
            "rss_rest_mib": round(rest, 1),
            "rss_busy_mib": round(busy, 1),
        }
    finally:
        gw.terminate()
        gw.wait(timeout=60)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", default="target/release/bindgate")
    p.add_argument("--rate", type=float, default=500)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--transports", default="pool,multiplex,direct")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as work:
        cfg = os.path.join(work, "sandbox.yaml")
        with open(cfg, "w") as f:
            f.write(
                f"""state_dir: {work}/sandbox-state
account_id: ac_bench
ingress:
  address: 127.0.0.1:0
  server_names: [localhost]
  h2: true
backends:
  echo: 127.0.0.1:0
endpoints:
  - url: {ECHO}
    target: echo
"""
            )
        subprocess.run(
            [a.bin, "sandbox", "-c", cfg, "client-cert", "--out", f"{work}/client"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        sb, ready = start([a.bin, "sandbox", "-c", cfg], "bindgate sandbox")
        try:
            print(
                f"bindgate replica cost: {a.rate:g} new connections/s for {a.seconds:g} s each, "
                f"{os.cpu_count()} CPUs shared by client, sandbox and gateway"
            )
            print(
                "| transport | connections ok / failed | gateway CPU per 1,000 conn/s | "
                "new conn/s per core | CPU per connection | RSS at rest | RSS under load |"
            )
            print("|---|--:|--:|--:|--:|--:|--:|")
            for t in a.transports.split(","):
                r = measure(a.bin, ready, t, a.rate, a.seconds, work)
                print(
                    f"| `{t}` | {r['ok']} / {r['failed']} | {r['cores_per_1000_cps']} cores | "
                    f"{r['cps_per_core']} | {r['cpu_ms_per_conn']} ms | "
                    f"{r['rss_rest_mib']} MiB | {r['rss_busy_mib']} MiB |"
                )
            print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        finally:
            sb.terminate()
            sb.wait(timeout=60)


if __name__ == "__main__":
    main()
