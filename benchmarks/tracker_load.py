#!/usr/bin/env python3
"""Announces per second the LAN tracker sustains, with latency percentiles, in one run.

Starts ``p2pfleet tracker`` on 127.0.0.1 (an ephemeral port) with one registered torrent
and a ten-group policy, then a load generator in this process: PEERS simulated peers
(each with its own peer id, port and host name) first announce ``started``, then keep
re-announcing over CONNECTIONS keep-alive HTTP/1.1 connections until COUNT announces or
SECONDS have passed. The tracker places peers by address, as it does in a lab: each
connection comes from its own loopback address in its group's network (127.1.GROUP.0/24),
a peer always announces over the same one, and the origin has its own (127.0.0.2). Every reply is checked to be a bencoded peer list. Prints the rate
and p50/p90/p99/max latency of the measured phase.

With ``--idle N`` the measured phase runs while N more connections sit open without
sending anything (a flood of idle connections), and ``--nofile L`` runs the tracker under
``ulimit -n L``; the tracker's RSS and its connection counters are printed after the run.

    .venv/bin/python benchmarks/tracker_load.py [--peers 1000] [--count 30000] [--seconds 30]
    .venv/bin/python benchmarks/tracker_load.py --idle 2000 --nofile 1024 --count 10000
"""
import argparse
import asyncio
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from urllib.parse import quote_from_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INFO_HASH = bytes.fromhex("5a" * 20)
IMAGE_SIZE = 256 << 30
GROUPS = 10
ORIGIN = "127.0.0.2"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(directory, port):
    lines = [f'listen: "127.0.0.1:{port}"', "allowed_networks: [127.0.0.0/8]", "interval: 1800",
             f"info_hashes: [{INFO_HASH.hex()}]", "log_level: warning", "max_numwant: 200", "groups:"]
    for g in range(GROUPS):
        lines.append(f"  room{g:02d}: {{networks: [127.1.{g}.0/24]}}")
    lines.append(f"policy: {{seeders: [{ORIGIN}], origin_fanout: 4, other_group_peers: 4}}")
    path = os.path.join(directory, "tracker.yml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def connection_of(i, connections):
    """The connection peer ``i`` announces over: 0 is the origin's own, the others share 1..N."""
    return 0 if i == 0 else 1 + (i - 1) % connections


def source_of(connection):
    """A connection's source address: the origin's, else one in its group's network."""
    if connection == 0:
        return ORIGIN
    index = connection - 1
    return f"127.1.{index % GROUPS}.{index // GROUPS + 1}"


def request(port, i, left, event=None):
    peer_id = b"-BENCH0-" + i.to_bytes(12, "big")
    query = (f"info_hash={quote_from_bytes(INFO_HASH)}&peer_id={quote_from_bytes(peer_id)}"
             f"&port={10000 + i}&uploaded={IMAGE_SIZE - left}&downloaded={IMAGE_SIZE - left}&left={left}"
             f"&compact=1&numwant=50&host={'origin' if i == 0 else f'pc-{i:04d}'}")
    if event:
        query += f"&event={event}"
    return (f"GET /announce?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "User-Agent: p2pfleet-bench\r\n\r\n").encode()


async def roundtrip(reader, writer, payload):
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    length = None
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if not head.startswith(b"HTTP/1.1 200") or length is None:
        raise RuntimeError(f"unexpected reply: {head[:200]!r}")
    body = await reader.readexactly(length)
    if not body.startswith(b"d8:complete") or b"5:peers" not in body:
        raise RuntimeError(f"not a peer list: {body[:200]!r}")


async def worker(port, source, jobs, latencies, deadline):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        while time.monotonic() < deadline:
            try:
                payload = jobs.pop()
            except IndexError:
                return
            started = time.perf_counter()
            await roundtrip(reader, writer, payload)
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def phase(port, payloads, seconds):
    """Send (connection, request) pairs, each connection's in order, all connections at once."""
    latencies = []
    queues = {}
    for connection, payload in reversed(payloads):
        queues.setdefault(connection, []).append(payload)
    deadline = time.monotonic() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(worker(port, source_of(connection), jobs, latencies, deadline)
                           for connection, jobs in queues.items()))
    return latencies, time.perf_counter() - started


def open_idle(port, count):
    """``count`` connections that never send a byte; the tracker may close them."""
    sockets = []
    for i in range(count):
        try:
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        except OSError as exc:
            for s in sockets:
                s.close()
            raise SystemExit(f"idle connection {i} of {count} not accepted: {exc}") from None
    return sockets


def tracker_report(port, pid):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        body = b"".join(iter(lambda: s.recv(65536), b""))
    wanted = ("connections", "connection_limit", "idle_connections_closed_total")
    counters = {}
    for line in body.decode().splitlines():
        name, _, value = line.partition(" ")
        if name.removeprefix("p2pfleet_tracker_") in wanted:
            counters[name.removeprefix("p2pfleet_tracker_")] = int(float(value))
    return rss, counters


def percentile(sorted_values, fraction):
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--count", type=int, default=30000, help="announces in the measured phase")
    parser.add_argument("--seconds", type=float, default=30, help="stop the measured phase after this long")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--idle", type=int, default=0, help="idle connections held open while measuring")
    parser.add_argument("--nofile", type=int, help="the tracker's descriptor limit (ulimit -n)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if args.idle + args.connections + 100 > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.idle + args.connections + 100), hard))
    limit = None if args.nofile is None else \
        (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile)))

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(tmp, port)
        tracker = subprocess.Popen([sys.executable, os.path.join(ROOT, "bin", "p2pfleet"), "tracker",
                                    "--config", config], stderr=subprocess.PIPE, preexec_fn=limit)
        idle = []
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if tracker.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"tracker did not start: {tracker.stderr.read().decode()[-2000:]}")
                    time.sleep(0.05)

            rng = random.Random(1)
            lefts = [0] + [IMAGE_SIZE] * (args.peers - 1)
            started = [(connection_of(i, args.connections), request(port, i, lefts[i], "started"))
                       for i in range(args.peers)]
            warm, warm_seconds = asyncio.run(phase(port, started, 60))
            idle = open_idle(port, args.idle)
            measured = []
            for _ in range(args.count):
                i = rng.randrange(args.peers)
                lefts[i] = max(0, lefts[i] - rng.randrange(1 << 30)) if i else 0
                measured.append((connection_of(i, args.connections), request(port, i, lefts[i])))
            latencies, seconds = asyncio.run(phase(port, measured, args.seconds))
            rss, counters = tracker_report(port, tracker.pid)
        finally:
            for s in idle:
                s.close()
            tracker.send_signal(signal.SIGTERM)
            tracker.wait(10)
        log = tracker.stderr.read().decode(errors="replace").splitlines()

    latencies.sort()
    ms = [x * 1000 for x in latencies]
    print(f"tracker load: {args.peers} simulated peers on one torrent, {args.connections} keep-alive "
          f"connections, tracker and load generator on this machine ({os.cpu_count()} CPUs)")
    print(f"  warm-up: {len(warm)} 'started' announces in {warm_seconds:.2f} s")
    print(f"  measured: {len(latencies)} announces in {seconds:.2f} s = {len(latencies) / seconds:,.0f} announces/s")
    print(f"  latency ms: p50 {percentile(ms, .5):.2f}  p90 {percentile(ms, .9):.2f}  "
          f"p99 {percentile(ms, .99):.2f}  max {ms[-1]:.2f}  mean {statistics.fmean(ms):.2f}")
    if args.idle or args.nofile:
        print(f"  with {args.idle} idle connections, tracker descriptor limit {args.nofile or 'inherited'}: "
              + ", ".join(f"{k} {v}" for k, v in counters.items()))
    print(f"  tracker RSS after the run: {rss:.0f} MB; tracker log: {len(log)} lines")


if __name__ == "__main__":
    main()
