"""`lab image` builds another release image the server sees at once in /srv/images."""
import os
import subprocess
import sys

from helpers import ROOT


def test_lab_image_builds_a_release_the_server_sees(lab):
    release = f"x{os.getpid()}"
    path = os.path.join(lab.state["images"], f"release-{release}.img")
    try:
        proc = subprocess.run([sys.executable, "-m", "lab", "--lab", lab.name, "image", release], cwd=ROOT,
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == path
        assert os.path.getsize(path) == lab.state["slot_size"]                     # slot-sized ...
        assert os.stat(path).st_blocks * 512 < lab.state["slot_size"]             # ... and sparse
        listing = lab.ssh("server", f"ls -l /srv/images/release-{release}.img")
        assert str(lab.state["slot_size"]) in listing
        marker = subprocess.run(["debugfs", "-R", "cat /etc/lab-release", path], capture_output=True, text=True)
        assert marker.stdout == f"{release}\n"
    finally:
        if os.path.exists(path):
            os.remove(path)
