"""What tests share besides fixtures (those are in tests/conftest.py): the checkout, the
p2pfleet command line, real images, and whether this machine has loop devices and the lab.

The modules beside this one drive real processes (``agent``, ``swarm``, ``tracker``), the
collection's modules and playbooks (``modules``, ``playbook``, ``reimage``, ``check_mode``),
the virtual lab (``lab_handle``) and the built collection (``build``); ``wait.until`` is the
one bounded wait; ``collection`` makes ``ansible_collections.p2pfleet.imaging`` this checkout.
"""
import os
import shutil
import subprocess
import sys

import pytest

from .collection import ROOT

P2PFLEET = [sys.executable, os.path.join(ROOT, "bin", "p2pfleet")]

MIB = 1 << 20


def _loop_devices_usable():
    if os.geteuid() != 0:
        return "loop devices need root"
    if not shutil.which("losetup"):
        return "losetup (util-linux) is not installed"
    if not os.path.exists("/dev/loop-control"):
        return "/dev/loop-control is missing (no loop device support)"
    return None


LOOP_SKIP_REASON = _loop_devices_usable()
needs_loop = pytest.mark.skipif(LOOP_SKIP_REASON is not None, reason=LOOP_SKIP_REASON or "")


def random_image(path, size, seed=1):
    """A file of ``size`` pseudo-random bytes (deterministic per seed, incompressible)."""
    import random
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MIB)
            f.write(rng.randbytes(n))
            left -= n
    return str(path)


def run_cli(*args, timeout=120, check=False):
    """Run bin/p2pfleet; returns CompletedProcess with text output."""
    proc = subprocess.run(P2PFLEET + [str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"p2pfleet {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


# ---- the virtual lab (docs/lab.md): one lab per test session, shared by every module ----

LAB_TOOLS = ("debootstrap", "systemd-nspawn", "grub-editenv", "sgdisk", "ssh")


def _lab_usable():
    if os.geteuid() != 0:
        return "the virtual lab needs root"
    missing = [t for t in LAB_TOOLS if not shutil.which(t)]
    return f"the virtual lab needs {', '.join(missing)} (make deps)" if missing else None


LAB_SKIP_REASON = _lab_usable()
needs_lab = pytest.mark.skipif(LAB_SKIP_REASON is not None, reason=LAB_SKIP_REASON or "")
# The session lab: 1 server + 4 terminals in 2 rooms; links and uplinks capped so the rate tests
# measure something (the caps are far above what the other tests send).
SESSION_LAB = {"terminals": 4, "rooms": 2, "rate": "100mbit", "uplink": "150mbit", "slot_size": "1G"}
