#!/usr/bin/env python3
"""Where a paced connection's time goes, from a packet capture of one `load` run.

    tcpdump -i lo -s 96 -w /tmp/paced.pcap &
    cargo bench --bench load -- --only paced --targets pool+early
    kill %1; python3 benches/phases.py /tmp/paced.pcap

Capture one bindgate target at a time: the ports are recognised from the traffic. The gateway's
listener and the sandbox's echo backend each take one SYN per connection, the listener's first;
the ingress is the other port the gateway sends to. Each phase is the time from the client's SYN,
as the loopback device saw it; the median and the 90th percentile over the connections.
Python's standard library only.
"""

import bisect
import collections
import statistics
import struct
import sys

SYN, ACK, FIN = 0x02, 0x10, 0x01


def packets(path):
    """(time s, source port, destination port, TCP flags, payload bytes) of each IPv4 TCP packet."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24:
            sys.exit(f"{path}: not a pcap file")
        magic = struct.unpack("<I", head[:4])[0]
        if magic in (0xA1B2C3D4, 0xA1B23C4D):
            endian = "<"
        elif magic in (0xD4C3B2A1, 0x4D3CB2A1):
            endian = ">"
            magic = struct.unpack(">I", head[:4])[0]
        else:
            sys.exit(f"{path}: not a pcap file (pcapng is not read; use tcpdump -w)")
        scale = 1e-9 if magic == 0xA1B23C4D else 1e-6
        link = struct.unpack(endian + "I", head[20:24])[0]
        if link != 1:
            sys.exit(f"{path}: link type {link}; capture with `tcpdump -i lo` (Ethernet framing)")
        out = []
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return out
            sec, frac, incl, _ = struct.unpack(endian + "IIII", rec)
            frame = f.read(incl)
            if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
            ihl = (ip[0] & 0x0F) * 4
            if ip[9] != 6 or len(ip) < ihl + 14:
                continue
            total = struct.unpack("!H", ip[2:4])[0]
            tcp = ip[ihl:]
            sport, dport = struct.unpack("!HH", tcp[:4])
            off = (tcp[12] >> 4) * 4
            out.append((sec + frac * scale, sport, dport, tcp[13], total - ihl - off))


def ports(pkts):
    syns = collections.Counter(p[2] for p in pkts if p[3] & SYN and not p[3] & ACK)
    if not syns:
        sys.exit("no connections in the capture")
    top = syns.most_common(1)[0][1]
    busy = [port for port, n in syns.items() if n >= top // 2]
    big = collections.Counter(p[2] for p in pkts if p[4] >= 300)
    ingress = None
    hello = [port for port in busy if big[port] >= top // 2]
    if len(hello) == 1:
        # `pool`: each checkout's refill is a new connection too, opened with a ClientHello.
        ingress = hello[0]
        busy.remove(ingress)
    if len(busy) == 1:
        # An `inline_echo` endpoint (the load bench's): the ingress echoes, no backend is dialed.
        listener, backend = busy[0], None
    elif len(busy) == 2:
        at = {port: sorted(p[0] for p in pkts if p[2] == port and p[3] & SYN and not p[3] & ACK) for port in busy}

        def lead(a, b):
            """Median time from a SYN to `a` to the next SYN to `b`."""
            gaps = [at[b][i] - t for t in at[a] if (i := bisect.bisect_left(at[b], t)) < len(at[b])]
            return statistics.median(gaps) if gaps else float("inf")

        a, b = busy
        listener, backend = (a, b) if lead(a, b) < lead(b, a) else (b, a)
    else:
        sys.exit(f"expected the listener, and the echo backend if one is dialed, among {sorted(busy)}")
    if ingress is None:
        # `multiplex`: the busiest other port the traffic goes to.
        sent = collections.Counter(
            p[2] for p in pkts if p[4] > 0 and {p[1], p[2]}.isdisjoint((listener, backend))
        )
        if not sent:
            sys.exit("no traffic to an ingress found")
        ingress = sent.most_common(1)[0][0]
    return listener, ingress, backend


def upgrade_size(n, pooled):
    """Whether a packet to the ingress of `n` payload bytes can be the upgrade. With `pool`, the
    refills' handshakes send small records too (a 64-byte Finished, 23- and 24-byte records); a
    bench endpoint's `ConnRequest` is one 30-60 byte record."""
    return 30 <= n <= 60 if pooled else 0 < n < 200


def phases(pkts, listener, ingress, backend):
    times = [p[0] for p in pkts]
    # `pool`: new connections to the ingress during the run (the refills).
    pooled = any(p[2] == ingress and p[3] & SYN and not p[3] & ACK for p in pkts)
    out = collections.defaultdict(list)
    for p in pkts:
        if p[2] != listener or not p[3] & SYN or p[3] & ACK:
            continue
        t0, client = p[0], p[1]
        window = pkts[bisect.bisect_left(times, t0) : bisect.bisect_left(times, t0 + 0.01)]

        def first(pred):
            return next((e[0] - t0 for e in window if pred(e)), None)

        echoed = first(lambda e: e[1] == listener and e[2] == client and e[4] > 0)
        if echoed is None:
            continue
        upgrade = next((e for e in window if e[2] == ingress and upgrade_size(e[4], pooled)), None)
        # The connection to the ingress that carried the upgrade (with `multiplex`, the shared one).
        conn = upgrade[1] if upgrade else None
        row = {
            "client handshake done": first(lambda e: e[1] == client and e[2] == listener and e[3] & ACK),
            "upgrade sent to the ingress": upgrade and upgrade[0] - t0,
            "client's first byte": first(lambda e: e[1] == client and e[2] == listener and e[4] > 0),
            "ingress's first byte to the backend": first(lambda e: backend and e[2] == backend and e[4] > 0),
            "backend's answer": first(lambda e: backend and e[1] == backend and e[4] > 0),
            "ingress's first byte back": first(
                lambda e: conn and e[1] == ingress and e[2] == conn and e[4] > 0 and e[0] > upgrade[0]
            ),
            "echo reaches the client": echoed,
            "client's FIN": first(lambda e: e[1] == client and e[3] & FIN),
        }
        into = [e[0] - t0 for e in window if e[1] == ingress and e[4] > 0 and e[0] - t0 <= echoed]
        if into:
            row["(gateway: ingress bytes in -> client bytes out)"] = echoed - into[-1]
        for k, v in row.items():
            if v is not None:
                out[k].append(v)
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    pkts = packets(sys.argv[1])
    listener, ingress, backend = ports(pkts)
    print(f"listener :{listener}, ingress :{ingress}, echo backend :{backend or 'none (inline_echo)'}")
    rows = phases(pkts, listener, ingress, backend)
    n = max((len(v) for v in rows.values()), default=0)
    print(f"{n} connections; microseconds after the client's SYN")
    print(f"{'phase':48} {'p50':>6} {'p90':>6}")
    for k, v in rows.items():
        v.sort()
        print(f"{k:48} {statistics.median(v) * 1e6:6.0f} {v[int(len(v) * 0.9)] * 1e6:6.0f}")


if __name__ == "__main__":
    main()
