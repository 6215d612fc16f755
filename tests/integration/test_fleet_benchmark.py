"""`benchmarks/fleet.py` (and so `make bench`) works on a lab of its own and cleans up.

Not a performance test: the numbers are whatever this machine gives. It checks that both
distributions really ran through a real lab — every terminal got the image over HTTP and
through the swarm into its slot, the origin sent at least one copy — and that the lab, its
namespaces and its memory-backed disks are gone afterwards.
"""
import json
import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT, needs_lab
from lab import disk

LAB_DIR = "/dev/shm/p2pfleet-bench-labs"


def namespaces(prefix_re):
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if re.match(prefix_re, line)}


@needs_lab
def test_fleet_benchmark_runs_http_and_p2p_side_by_side_and_cleans_up():
    name = f"fb{os.getpid()}"
    before = namespaces(r"pfl\d\d-")
    env = dict(os.environ, P2PFLEET_LAB_DIR=LAB_DIR)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "fleet.py"), "--lab", name,
                           "--terminals", "1,2", "--size", "16M", "--rate", "100mbit"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "image 16 MiB in 64 pieces of 256 KiB" in out      # the default piece policy
    t_min = float(re.search(r"T_min = one terminal alone = ([\d.]+) s", out).group(1))
    assert t_min > 1.0, "16 MiB at 100 Mbit/s cannot take less than 1.3 s: the link is not capped"
    rows = {int(m.group(1)): m.group(0).split() for m in re.finditer(r"^\s+(\d+)\s+[\d.]+s .*$", out, re.M)}
    assert sorted(rows) == [1, 2], out
    for n, cols in rows.items():
        t_http, t_p2p, eff, origin = float(cols[1][:-1]), float(cols[2][:-1]), float(cols[3]), float(cols[7][:-1])
        assert t_http > 0.8 * n * t_min, f"N={n}: HTTP fan-out faster than the server's link allows: {cols}"
        assert 0.0 < eff <= 1.2 and abs(t_min / t_p2p - eff) < 0.1, cols  # times printed to 0.1 s
        assert origin >= 0.9, f"N={n}: the origin sent far less than one copy, so the swarm did not fetch: {cols}"
    assert not os.path.exists(os.path.join(LAB_DIR, name)), "the benchmark left its lab directory"
    assert namespaces(r"pfl\d\d-") <= before, "the benchmark left network namespaces behind"


@needs_lab
def test_fleet_benchmark_light_lab_in_two_rooms_prints_the_bound_and_the_copies_into_each_room(tmp_path):
    """``--light``: the agents run in bare network namespaces; the table has T_bound and
    eff_bound, the copies into each room, the latest terminals; ``--json`` has the same; the
    lab is gone afterwards."""
    name = f"fl{os.getpid()}"
    env = dict(os.environ, P2PFLEET_LAB_DIR=LAB_DIR)
    results = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "fleet.py"), "--lab", name, "--light",
                           "--rooms", "2", "--terminals", "4", "--size", "16M", "--rate", "20mbit", "--no-http",
                           "--json", str(results)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    prefix = re.search(rf"light lab {name} \((pfl\d\d)-\*\)", out).group(1)
    assert "2 room(s)" in out, out
    bound = float(re.search(r"^T_bound = max\(F/U_server [\d.]+ s, F/D_terminal [\d.]+ s\) = ([\d.]+) s$", out,
                            re.M).group(1))
    assert abs(bound - 16 * 2**20 * 8 / 20e6) < 0.1, out             # 16 MiB at 20 Mbit/s: 6.7 s
    assert re.search(r"^\s+N\s+T_http\s+T_p2p\s+eff\s+eff_bound\s", out, re.M), out
    row = re.search(r"^\s+4\s+-\s+([\d.]+)s\s+([\d.]+)\s+([\d.]+)\s", out, re.M)
    assert row, out
    t_p2p, eff_bound = float(row.group(1)), float(row.group(3))
    assert 0.0 < eff_bound <= 1.0 and abs(bound / t_p2p - eff_bound) < 0.02, row.group(0)
    rooms = re.search(r"^N=4: copies of the image into each room .*: room1 ([\d.]+), room2 ([\d.]+)$", out, re.M)
    assert rooms and all(float(copies) >= 0.95 for copies in rooms.groups()), out   # each room got it all
    assert re.search(r"^N=4: latest first piece: t0\d [\d.]+ s, .*; latest done: t0\d [\d.]+ s, ", out, re.M), out
    [entry] = json.loads(results.read_text())
    assert entry["n"] == 4 and entry["light"] is True and entry["t_p2p"] == pytest.approx(t_p2p, abs=0.05)
    assert set(entry["room_copies"]) == {"room1", "room2"} and len(entry["done"]) == 4, entry
    assert not os.path.exists(os.path.join(LAB_DIR, name)), "the benchmark left its lab directory"
    # by its prefix: other labs come and go on this machine meanwhile
    assert not namespaces(rf"{prefix}-"), "the benchmark left network namespaces behind"
    assert not disk.loops_backed_by(os.path.join(LAB_DIR, name)), "the benchmark left loop devices behind"


@needs_lab
def test_fleet_benchmark_delta_mode_fetches_only_changed_and_non_zero_pieces():
    """``--delta``/``--zeros``: the byte counts are exact consequences of delta transfer (the
    times are only printed): release 2 costs the network its changed pieces once per terminal,
    and a 75 %-zero image costs its data pieces only."""
    name = f"fd{os.getpid()}"
    env = dict(os.environ, P2PFLEET_LAB_DIR=LAB_DIR)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "fleet.py"), "--lab", name,
                           "--terminals", "2", "--size", "16M", "--rate", "100mbit", "--delta", "10", "--zeros", "75"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    delta = re.search(r"^\s+2\s+([\d.]+)s\s+([\d.]+)s\s+([\d.]+)\s+([\d.]+)M\s+([\d.]+)M\s+([\d.]+)\s+([\d.]+)M\s+"
                      r"([\d.]+)M\s+(\d+)$", out, re.M)
    assert delta, out
    changed, fetched, per_change, local, rejected = (float(delta.group(i)) for i in (4, 5, 6, 8, 9))
    assert changed == 1.5 and 0.95 <= per_change <= 1.2, out    # 6 of 64 pieces of 256 KiB
    assert abs(local - (16 - changed)) < 0.01 and rejected == 0, out
    zeros = re.search(r"^\s+2\s+([\d.]+)s\s+([\d.]+)s\s+([\d.]+)\s+([\d.]+)M\s+([\d.]+)M\s+([\d.]+)M$", out, re.M)
    assert zeros, out
    zero_per_terminal, fetched, data = (float(zeros.group(i)) for i in (4, 5, 6))
    assert zero_per_terminal == 12.0 and data == 8.0 and 0.95 * data <= fetched <= 1.2 * data, out
    assert not os.path.exists(os.path.join(LAB_DIR, name)), "the benchmark left its lab directory"
