"""`make demo` keeps working: the whole demo, smaller, as a user would run it."""
import os
import subprocess
import sys

from conftest import ROOT, needs_loop


@needs_loop
def test_demo_moves_an_image_partition_to_partition_byte_identical():
    before = subprocess.run(["losetup", "--list", "--noheadings", "--output", "NAME"],
                            capture_output=True, text=True).stdout.split()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "lab", "demo.py"), "--size", "64M"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "verified: True" in proc.stdout
    assert "identical: 64 MiB moved partition → partition" in proc.stdout
    after = subprocess.run(["losetup", "--list", "--noheadings", "--output", "NAME"],
                           capture_output=True, text=True).stdout.split()
    assert sorted(after) == sorted(before), "the demo left loop devices behind"
