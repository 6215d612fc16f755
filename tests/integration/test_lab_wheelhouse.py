"""`make wheelhouse` holds everything the hosts' Python needs: a lab host installs the runtime offline."""
import glob
import os
import subprocess

import pytest

from helpers import ROOT
from lab import lab as labmod

WHEELS = glob.glob(os.path.join(labmod.WHEELHOUSE, "*.whl"))


@pytest.mark.skipif(not WHEELS, reason=f"no wheels in {labmod.WHEELHOUSE} (make wheelhouse)")
def test_runtime_installs_offline_from_the_wheelhouse(lab):
    lab.ssh("server", "rm -rf /tmp/wheels /tmp/venv && mkdir /tmp/wheels")
    with open(os.path.join(ROOT, "requirements.txt"), "rb") as requirements:
        lab.ssh("server", "cat > /tmp/wheels/requirements.txt", stdin=requirements)
    tar = subprocess.Popen(["tar", "-C", labmod.WHEELHOUSE, "-c", "."], stdout=subprocess.PIPE)
    lab.ssh("server", "tar -C /tmp/wheels -x", stdin=tar.stdout, timeout=120)
    assert tar.wait() == 0
    # the host has no route to any index: --no-index makes pip say so instead of timing out
    lab.ssh("server", "python3 -m venv /tmp/venv && /tmp/venv/bin/pip install -q --no-index "
            "--find-links /tmp/wheels -r /tmp/wheels/requirements.txt", timeout=300)
    out = lab.ssh("server", "/tmp/venv/bin/python -c 'import libtorrent, blake3, aiohttp, yaml; "
                  "print(libtorrent.__version__)'")
    assert out.startswith("2.1.1")
    lab.ssh("server", "rm -rf /tmp/wheels /tmp/venv")
