"""`make demo-engine` keeps working: the whole engine demo, smaller, as a user would run it."""
import os
import re
import subprocess
import sys

from helpers import ROOT, needs_loop


def loop_backings():
    """Backing files of attached loop devices (other tests on this machine attach their own)."""
    out = subprocess.run(["losetup", "--list", "--noheadings", "--output", "BACK-FILE"],
                         capture_output=True, text=True).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


@needs_loop
def test_demo_moves_an_image_partition_to_partition_byte_identical():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "lab", "demo.py"), "--size", "64M"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "verified: True" in proc.stdout
    assert "identical: 64 MiB moved partition → partition" in proc.stdout
    work = re.search(r"(/\S*p2pfleet-demo-[^/\s]+)", proc.stdout)
    assert work, "the demo does not say where it worked"
    left = [b for b in loop_backings() if b.startswith(work.group(1))]
    assert not left, f"the demo left loop devices behind: {left}"
