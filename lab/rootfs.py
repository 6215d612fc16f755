"""The base root filesystem every lab host boots: Debian 12 from debootstrap, built once.

The tree is cached under ``CACHE`` keyed by a hash of the recipe below, so it is rebuilt only
when the recipe changes; a build runs in a temporary directory and is renamed into place, so
an interrupted build never leaves a half tree that looks finished.
"""
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

CACHE = os.environ.get("P2PFLEET_LAB_CACHE", "/var/cache/p2pfleet-lab")
SUITE = "bookworm"
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3",
    "python3-venv",    # the roles build the agent's virtualenv on the host, offline
    "iproute2", "procps",
    "grub-common",     # grub-editenv: terminals switch slots in their own GRUB environment
    "iperf3",          # link-rate measurements between hosts
)

# Run inside the fresh tree (cwd = tree). Every host gets its own identity at boot: an empty
# machine-id makes systemd take the container UUID the firmware passes, and sshd generates its
# host keys on first start, so no two hosts (nor two slots) share keys.
CUSTOMIZE = r"""
set -eu
: > etc/machine-id
rm -f var/lib/dbus/machine-id etc/hostname etc/ssh/ssh_host_*
mkdir -p etc/systemd/system/ssh.service.d
cat > etc/systemd/system/ssh.service.d/lab-host-keys.conf <<'UNIT'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
UNIT
# Lab hosts are offline: nothing may try to reach a package index on a timer.
for t in apt-daily.timer apt-daily-upgrade.timer; do ln -sf /dev/null etc/systemd/system/$t; done
ln -sf /dev/null etc/systemd/system/iperf3.service
mkdir -p -m 700 root/.ssh
mkdir -p boot var/lib/p2pfleet srv/images
rm -rf var/cache/apt/archives/*.deb var/lib/apt/lists/*
"""


def recipe_hash():
    recipe = {"suite": SUITE, "variant": "minbase", "packages": PACKAGES, "customize": CUSTOMIZE}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def apt_mirror():
    """The Debian mirror this machine's apt uses for SUITE (debootstrap fetches from the same place)."""
    for path in ("/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"):
        try:
            text = open(path).read()
        except FileNotFoundError:
            continue
        for stanza in text.split("\n\n"):           # deb822: one stanza per source
            fields = dict(re.findall(r"^(URIs|Suites):\s*(.*)$", stanza, re.M))
            if SUITE in fields.get("Suites", "").split() and fields.get("URIs"):
                return fields["URIs"].split()[0]
        for line in text.splitlines():               # one-line format: deb URI SUITE COMPONENTS
            words = line.split()
            if len(words) > 2 and words[0] == "deb" and words[2] == SUITE:
                return words[1]
    return None


def base_rootfs(log=sys.stderr):
    """Path of the cached base tree, building it first if the recipe changed (needs network)."""
    path = os.path.join(CACHE, f"rootfs-{recipe_hash()}")
    if os.path.isdir(path):
        return path
    os.makedirs(CACHE, exist_ok=True)
    with open(os.path.join(CACHE, ".rootfs.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)       # a second lab waits for the first one's build
        if os.path.isdir(path):
            return path
        tmp = f"{path}.building"
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"building the base root filesystem {path} with debootstrap (once)", file=log, flush=True)
        cmd = ["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), SUITE, tmp]
        mirror = apt_mirror()
        if mirror:
            cmd.append(mirror)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"debootstrap failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
        subprocess.run(["sh", "-c", CUSTOMIZE], cwd=tmp, check=True)
        os.rename(tmp, path)
    return path
