#!/usr/bin/env python3
"""Instructions the gateway executes per request or connection, counted by valgrind (callgrind).

A count of instructions does not move with the machine's load the way CPU time does (this VM's
CPU per request moves by 20 % between runs of one build), so it can tell two builds apart by a
few per cent in one run each. It counts user-space instructions only: the kernel's share (the
system calls, TCP over loopback, the wake-ups) is not in it, and neither are cache misses or the
time the instructions take. Use it beside `load`, not instead of it.

It runs the real binary with one worker thread (`--concurrency 1`) under
`valgrind --tool=callgrind`, in front of a backend in this process (an HTTP/1.1 server answering
every request with a 256-byte body and, as nginx does, `connection: keep-alive`; and a TCP echo), with one `protocol: http` listener and one
`protocol: tcp` listener to `static` clusters. For each workload it zeroes the counters
(`callgrind_control`), runs a small and a large count, and dumps the counters after each: the
difference, divided by the difference of the counts, is the cost of one more request, without
start-up or the fixed cost of a run.

    python3 benches/instructions.py --bin target/release/bindgate [--counts 200,600]
        [--connections 4] [--workloads http,http-lowercase,http-close,tcp,pool,multiplex] [--groups 12]
        [--functions 0] [--keep DIR]

Workloads: `http` (kept-alive clients, HTTP/1.1, `GET /`), `http-lowercase` (the same through a
listener with `preserve_header_case: false`), `http-close` (a new client connection per request,
`Connection: close`), `tcp` (a new connection per exchange of 32 bytes), and the same exchange
through a `bindgate sandbox` as the binding ingress, with `transport: pool` (`pool`) and
`transport: multiplex` (`multiplex`): the gateway's TLS, binding upgrades and refills counted,
not the sandbox's. A build from before
`preserve_header_case` refuses the config of `http-lowercase`: leave it out for such a build. Needs
valgrind (`apt-get install valgrind`); says so and exits 0 without it. Loopback only, ports
chosen by the OS, every wait bounded.
"""

import argparse
import glob
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

BODY = b"x" * 256
# As nginx answers a kept-alive request: with `connection: keep-alive`, a hop-by-hop field.
HTTP_OK = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 256\r\n"
    b"connection: keep-alive\r\n\r\n" + BODY
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_head(sock, buf):
    """Reads until the end of a message head; returns (head, rest) or (None, b"") at EOF."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None, b""
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def serve(listener, one):
    """Accepts until the listener is closed; each connection is served by `one` in a thread."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=one, args=(conn,), daemon=True).start()


def answer_http(conn):
    with conn:
        buf = b""
        while True:
            head, buf = read_head(conn, buf)
            if head is None:
                return
            conn.sendall(HTTP_OK)
            if b"connection: close" in head.lower():
                return


def echo(conn):
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)


def read_response(sock, buf):
    head, buf = read_head(sock, buf)
    if head is None:
        raise RuntimeError("the gateway closed the connection before an answer")
    status = head.split(b"\r\n", 1)[0]
    if not status.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected answer: {status!r}")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", b"\r\n" + head).group(1))
    while len(buf) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("the gateway closed the connection mid-body")
        buf += chunk
    return buf[length:]


def http_keep_alive(port, count):
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        buf = b""
        for _ in range(count):
            s.sendall(b"GET / HTTP/1.1\r\nhost: bench\r\nuser-agent: instructions\r\naccept: */*\r\n\r\n")
            buf = read_response(s, buf)


def http_close(port, count):
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(b"GET / HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
            read_response(s, b"")


def tcp_exchange(port, count):
    payload = b"p" * 32
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("the gateway closed the connection before the echo")
                got += chunk
            s.shutdown(socket.SHUT_WR)
            s.recv(1)


WORKLOADS = {
    "http": ("http", http_keep_alive, "request, kept-alive client"),
    "http-lowercase": ("http-lc", http_keep_alive, "request, kept-alive client, names lowercased"),
    "http-close": ("http", http_close, "request, a new client connection each"),
    "tcp": ("tcp", tcp_exchange, "connection, 32-byte echo"),
    "pool": ("pool", tcp_exchange, "connection, 32-byte echo through the sandbox, `transport: pool`"),
    "multiplex": ("multiplex", tcp_exchange, "connection, 32-byte echo through the sandbox, `transport: multiplex`"),
}
# The workloads through a binding ingress: they start a `bindgate sandbox` (not under callgrind).
INGRESS_WORKLOADS = ("pool", "multiplex")


def start_sandbox(binary, tmp):
    """`bindgate sandbox` with one endpoint echoing on the upgraded connection itself (as the
    `load` bench's), and a client certificate it issued; returns (process, ingress, ca, cert,
    key)."""
    state = os.path.join(tmp, "sandbox-state")
    cfg = os.path.join(tmp, "sandbox.yaml")
    with open(cfg, "w") as f:
        f.write(f"""state_dir: {state}
account_id: ac_instructions
ingress:
  address: 127.0.0.1:0
  server_names: [localhost]
backends:
  echo: 127.0.0.1:0
  http: 127.0.0.1:0
endpoints:
  - url: tcp://echo.instructions:7000
    target: inline_echo
""")
    certs = os.path.join(tmp, "client")
    subprocess.run([binary, "sandbox", "-c", cfg, "client-cert", "--out", certs],
                   check=True, capture_output=True, timeout=120)
    proc = subprocess.Popen([binary, "sandbox", "-c", cfg], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env={**os.environ, "BINDGATE_LOG": "warn"})
    # Bounded, as every wait here: a sandbox that hangs before its ready line is given up on.
    line = ""
    if select.select([proc.stdout], [], [], 60)[0]:
        line = proc.stdout.readline()
    try:
        ready = json.loads(line or "{}")
    except ValueError:
        ready = {"line": line}
    if ready.get("event") != "ready":
        proc.kill()
        sys.exit(f"instructions: the sandbox did not start: {ready}")
    return (proc, ready["ingress"], ready["ca"], os.path.join(certs, "tls.crt"),
            os.path.join(certs, "tls.key"))


def ingress_config(ports, ingress, ca, cert, key):
    """Listeners `pool` and `multiplex`, each to the sandbox's echo endpoint through an ingress
    of that transport."""
    ingresses, listeners, clusters = "ingresses:\n", "", ""
    for transport in INGRESS_WORKLOADS:
        ingresses += f"""  - name: sandbox-{transport}
    address: {ingress}
    server_name: localhost
    ca: {ca}
    system_roots: false
    client_cert: {cert}
    client_key: {key}
    transport: {transport}
"""
        listeners += (f"    - {{ name: {transport}, address: 127.0.0.1:{ports[transport]}, protocol: tcp, "
                      f"routes: [ {{ cluster: echo-{transport} }} ] }}\n")
        clusters += (f"    - {{ name: echo-{transport}, type: binding_upstream, "
                     f"endpoint: \"tcp://echo.instructions:7000\", ingress: sandbox-{transport} }}\n")
    return ingresses, listeners, clusters


def run_clients(fn, port, count, connections):
    errors = []

    def worker():
        try:
            fn(port, count)
        except Exception as e:  # reported below; the run is void
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    if errors:
        raise RuntimeError(f"client failed: {errors[0]}")


def callgrind_control(pid, flag):
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, capture_output=True, timeout=120)


def newest_dump(outdir, pid, seen):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        dumps = set(glob.glob(os.path.join(outdir, f"cg.{pid}.*")))
        new = dumps - seen
        if new:
            seen |= new
            return new.pop()
        time.sleep(0.1)
    raise RuntimeError("callgrind wrote no dump")


def costs(path):
    """Self cost per (source file, function) in a callgrind dump, and the total. Read here rather
    than through `callgrind_annotate`, which shows a dump taken after `--zero` inclusive."""
    names = {"fl": {}, "fn": {}}
    cur_file = cur_fn = "?"
    file_of_fn = "?"
    skip = False
    per, total = {}, 0

    def resolve(kind, rest):
        m = re.match(r"\((\d+)\)\s*(.*)$", rest)
        if not m:
            return rest
        if m.group(2):
            names[kind][m.group(1)] = m.group(2)
        return names[kind].get(m.group(1), "?")

    with open(path, errors="replace") as f:
        for line in f:
            head = line[:3]
            if head == "fl=":
                file_of_fn = cur_file = resolve("fl", line[3:].strip())
            elif head in ("fi=", "fe="):
                cur_file = resolve("fl", line[3:].strip())
            elif head == "fn=":
                cur_fn = resolve("fn", line[3:].strip())
                cur_file = file_of_fn
            elif line.startswith(("cfl=", "cfi=")):
                resolve("fl", line[4:].strip())
            elif line.startswith("cfn="):
                resolve("fn", line[4:].strip())
            elif line.startswith("calls="):
                skip = True  # the next cost line is the call's inclusive cost
            elif line[:1] in "0123456789+-*":
                if skip:
                    skip = False
                    continue
                fields = line.split()
                if len(fields) >= 2:
                    n = int(fields[-1])
                    key = f"{cur_file}:{cur_fn}"
                    per[key] = per.get(key, 0) + n
                    total += n
    return total, per


def group(name):
    """The crate (or library) a function's source file belongs to."""
    src = name.split(":", 1)[0]
    m = re.search(r"/([A-Za-z0-9_\-]+)-\d+\.\d+\.\d+[^/]*/", src)
    if m:
        return m.group(1)
    if "/rustc/" in src:
        return "std (inlined generics: their callers' work)"
    if src.startswith("./") or src == "???":
        return "libc and the loader (no sources)"
    if "/src/" in src and "registry" not in src:
        return "bindgate"
    return src or "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("BINDGATE_BIN", "target/release/bindgate"))
    ap.add_argument("--counts", default="200,600", help="a small and a large count per connection")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--workloads", default="http,http-lowercase,http-close,tcp")
    ap.add_argument("--groups", type=int, default=12, help="crates listed per workload")
    ap.add_argument("--functions", type=int, default=0, help="functions listed per workload")
    ap.add_argument("--keep", metavar="DIR", help="copy the callgrind dumps there (for callgrind_annotate or kcachegrind)")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if not shutil.which(tool):
            print(f"instructions: skipped: `{tool}` is not installed (apt-get install valgrind)")
            return 0
    small, large = (int(n) for n in args.counts.split(","))
    if not 0 < small < large:
        sys.exit("--counts: two counts, the first smaller")
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit(f"--workloads: `{w}` is not one of {', '.join(WORKLOADS)}")

    http_backend = socket.create_server(("127.0.0.1", 0))
    echo_backend = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=serve, args=(http_backend, answer_http), daemon=True).start()
    threading.Thread(target=serve, args=(echo_backend, echo), daemon=True).start()
    ports = {"http": free_port(), "http-lc": free_port(), "tcp": free_port(), "admin": free_port(),
             "pool": free_port(), "multiplex": free_port()}
    lowercase = ""
    if "http-lowercase" in workloads:
        lowercase = (
            f"    - {{ name: web-lc, address: 127.0.0.1:{ports['http-lc']}, protocol: http, "
            "preserve_header_case: false, routes: [ { cluster: web } ] }\n"
        )
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = None
        try:
            ingresses, ingress_listeners, ingress_clusters = "", "", ""
            if any(w in INGRESS_WORKLOADS for w in workloads):
                sandbox, *ingress = start_sandbox(args.bin, tmp)
                ingresses, ingress_listeners, ingress_clusters = ingress_config(ports, *ingress)
            config = f"""version: 1
admin: {{ address: 127.0.0.1:{ports['admin']} }}
{ingresses}static_resources:
  listeners:
    - {{ name: web, address: 127.0.0.1:{ports['http']}, protocol: http, routes: [ {{ cluster: web }} ] }}
    - {{ name: echo, address: 127.0.0.1:{ports['tcp']}, protocol: tcp, routes: [ {{ cluster: echo }} ] }}
{lowercase}{ingress_listeners}  clusters:
    - {{ name: web, type: static, endpoints: [ "127.0.0.1:{http_backend.getsockname()[1]}" ] }}
    - {{ name: echo, type: static, endpoints: [ "127.0.0.1:{echo_backend.getsockname()[1]}" ] }}
{ingress_clusters}"""
            cfg = os.path.join(tmp, "bindgate.yaml")
            with open(cfg, "w") as f:
                f.write(config)
            log = open(os.path.join(tmp, "gateway.log"), "w")
            gw = subprocess.Popen(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.%p",
                 args.bin, "--concurrency", "1", "run", "-c", cfg],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "BINDGATE_LOG": "warn"},
            )
            try:
                deadline = time.monotonic() + 120
                while True:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{ports['admin']}/ready", timeout=5) as r:
                            if r.status == 200:
                                break
                    except OSError:
                        pass
                    if gw.poll() is not None or time.monotonic() > deadline:
                        sys.exit(f"instructions: the gateway did not become ready (log: {open(log.name).read()[-2000:]})")
                    time.sleep(0.2)
                seen = set()
                print(f"instructions: {args.bin} under callgrind, 1 worker thread; per {args.connections} "
                      f"client(s): {small} and {large}; cost of one more = difference / {args.connections * (large - small)}")
                for w in workloads:
                    kind, fn, unit = WORKLOADS[w]
                    run_clients(fn, ports[kind], 20, 1)  # warm: pools, caches
                    dumps = []
                    for count in (small, large):
                        callgrind_control(gw.pid, "--zero")
                        run_clients(fn, ports[kind], count, args.connections)
                        callgrind_control(gw.pid, "--dump")
                        dump = newest_dump(tmp, gw.pid, seen)
                        if args.keep:
                            os.makedirs(args.keep, exist_ok=True)
                            shutil.copy(dump, os.path.join(args.keep, f"{w}-{count}.callgrind"))
                        dumps.append(costs(dump))
                    n = args.connections * (large - small)
                    (t0, p0), (t1, p1) = dumps
                    per = (t1 - t0) / n
                    groups = {}
                    for name in set(p0) | set(p1):
                        g = group(name)
                        groups[g] = groups.get(g, 0) + (p1.get(name, 0) - p0.get(name, 0)) / n
                    print(f"\n{w}: {per:,.0f} instructions per {unit}")
                    for g, v in sorted(groups.items(), key=lambda kv: -kv[1])[: args.groups]:
                        print(f"  {v:9,.0f}  {g}")
                    if args.functions:
                        diff = {k: (p1.get(k, 0) - p0.get(k, 0)) / n for k in set(p0) | set(p1)}
                        print(f"  the {args.functions} costliest functions (self), by source file:")
                        for k, v in sorted(diff.items(), key=lambda kv: -kv[1])[: args.functions]:
                            src, _, fn = k.partition(":")
                            print(f"  {v:9,.0f}  {fn[:110]}  ({src.rsplit('/', 1)[-1]})")
            finally:
                gw.terminate()
                try:
                    gw.wait(60)
                except subprocess.TimeoutExpired:
                    gw.kill()
                log.close()
        finally:
            if sandbox:
                sandbox.kill()
                sandbox.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
