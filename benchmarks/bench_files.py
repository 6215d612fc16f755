"""Images and loop devices for the benchmarks (scripts in this folder import it)."""
import os
import subprocess

MIB = 1 << 20


def make_image(path, size):
    """``size`` random (incompressible) bytes."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 * MIB)
            f.write(os.urandom(n))
            left -= n


def losetup(path):
    """Attach ``path`` to a free loop device; the caller detaches it."""
    return subprocess.run(["losetup", "--find", "--show", path], check=True, capture_output=True,
                          text=True).stdout.strip()
