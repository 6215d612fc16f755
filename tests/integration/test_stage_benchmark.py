"""`benchmarks/stages.py` (and so `make bench`) times reimage.yml's stages on a lab of its own
and cleans up.

Not a performance test: the numbers are whatever this machine gives. At the smallest setting
(1 terminal, the smallest slots the release image fits in, fast links) it checks that both
fork settings really reimaged the lab — every stage timed for forks 5 and forks 1, a transfer
seen, every byte of the image over the network — and that the lab, its namespaces and the
release images it built are gone afterwards. (The benchmark's own tables compare forks at 4
to 16 terminals; a second terminal here only made each run longer.)
"""
import glob
import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT, needs_lab

LAB_DIR = "/dev/shm/p2pfleet-bench-labs"
ROWS = ("seed", "distribute", "verify", "switch", "summary", "total", "transfer", "overhead")


def namespaces(prefix_re):
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if re.match(prefix_re, line)}


@needs_lab
@pytest.mark.slow
@pytest.mark.timeout(900)   # about 3 min; up to 5 min more when a lab running beside it holds our loop devices
def test_stage_benchmark_times_every_stage_for_both_fork_settings_and_cleans_up():
    name = f"sb{os.getpid()}"
    before = namespaces(r"pfl\d\d-")
    env = dict(os.environ, P2PFLEET_LAB_DIR=LAB_DIR)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "stages.py"), "--lab", name,
                           "--terminals", "1", "--slot-size", "384M", "--rate", "1gbit"],
                          capture_output=True, text=True, timeout=840, cwd=ROOT, env=env)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-3000:]
    assert re.search(r"^\s+forks 5\s+forks 1\s+5/1\s+CPU f5\s+CPU f1$", out, re.M), out
    rows = {m.group(1): (float(m.group(2)), float(m.group(3)), float(m.group(4)))
            for m in re.finditer(r"^(\w+)\s+([\d.]+)s\s+([\d.]+)s\s+([\d.]+)\s", out, re.M)}
    assert set(ROWS) <= set(rows), out
    for forks5, forks1, ratio in (rows[row] for row in ROWS):
        assert forks5 > 0 and forks1 > 0, out
        # the ratio of the unrounded times, the times printed to 0.1 s and the ratio to 0.01
        low, high = (forks5 - 0.05) / (forks1 + 0.05), (forks5 + 0.05) / max(forks1 - 0.05, 1e-9)
        assert low - 0.005 <= ratio <= high + 0.005, out
    for column in (0, 1):
        stages = sum(rows[stage][column] for stage in ROWS[:5])
        assert abs(stages - rows["total"][column]) < 1.0, out          # the stages make up the run
        assert rows["transfer"][column] < rows["total"][column], out
    # 384 MiB over 1 Gbit/s links: at least 3 s, so the transfer was real and timed
    assert rows["transfer"][0] > 2.5 and rows["transfer"][1] > 2.5, out
    fetched = re.search(r"^fetched\s+([\d.]+)x\s+([\d.]+)x", out, re.M)
    assert fetched and all(0.95 <= float(x) <= 1.3 for x in fetched.groups()), out   # every byte moved
    assert not glob.glob(os.path.join(LAB_DIR, f"{name}n*")), "the benchmark left its lab directory"
    assert namespaces(r"pfl\d\d-") <= before, "the benchmark left network namespaces behind"
    for release in re.findall(r"release-(\d+)\.img", out):
        if release not in ("1", "2"):
            assert not glob.glob(f"/var/cache/p2pfleet-lab/images-*/release-{release}.img"), release
