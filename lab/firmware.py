"""A lab host's firmware: chooses the slot to boot, boots it in systemd-nspawn, and again on reboot.

One process per host (``python -m lab.firmware LABDIR HOST``), started by ``lab up``. It plays
what a real terminal's firmware and GRUB do together:

- the boot rule (Debian's GRUB with ``GRUB_DEFAULT=saved``): if ``next_entry`` is set in the
  GRUB environment, clear it, then boot it (one shot); otherwise boot ``saved_entry``; an
  empty, missing or unreadable environment or an unknown entry boots the first entry, A;
- ``reboot`` inside the host makes nspawn exit 133: choose again and boot again;
- a boot that fails (the slot does not mount, or init dies) is a kernel panic with
  ``panic=1``: reboot and choose again, which falls back to ``saved_entry`` because the one-shot
  ``next_entry`` was already cleared. After ``MAX_FAILED_BOOTS`` failures in a row it halts;
- ``poweroff`` inside the host (exit 0) turns it off; SIGTERM powers it off cleanly from outside;
  SIGHUP presses ctrl-alt-del (a clean reboot).

State for ``lab status`` goes to ``firmware.json`` beside the host's log.

The root file system it boots is mounted in a mount namespace of the firmware's own. Mounted
where every process sees it, it was copied into the mount namespace of each host booted
after it (outside their roots, where no mountinfo shows it), and kept the slot's file system
alive there after the switch: the old slot stayed busy, and a fetch into it was refused.
"""
import ctypes
import json
import os
import signal
import subprocess
import sys
import time

CLONE_NEWNS = 0x00020000
EXIT_REBOOT = 133            # systemd-nspawn's exit status when the container rebooted
MAX_FAILED_BOOTS = 5
ENTRIES = {"A": "A", "B": "B", "0": "A", "1": "B"}   # menuentry ids, or positions in the menu


def read_env(grubenv):
    proc = subprocess.run(["grub-editenv", grubenv, "list"], capture_output=True, text=True)
    if proc.returncode != 0:
        return {}
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def choose_entry(env):
    """(slot to boot, whether next_entry must be cleared first) for a GRUB environment."""
    if env.get("next_entry"):
        return ENTRIES.get(env["next_entry"], "A"), True
    return ENTRIES.get(env.get("saved_entry", ""), "A"), False


class Firmware:
    def __init__(self, labdir, name):
        with open(os.path.join(labdir, "state.json")) as f:
            self.lab = json.load(f)
        self.name = name
        self.host = self.lab["hosts"][name]
        self.dir = os.path.join(labdir, "hosts", name)
        self.root = os.path.join(self.dir, "root")
        self.nspawn = None
        self.stopping = False
        self.status = {"state": "starting", "slot": None, "boots": 0, "failed_boots": 0}

    def log(self, text):
        print(time.strftime("%H:%M:%S"), f"firmware[{self.name}]:", text, flush=True)

    def publish(self, **changes):
        self.status.update(changes, updated=time.time())
        tmp = os.path.join(self.dir, "firmware.json.tmp")
        with open(tmp, "w") as f:
            json.dump(self.status, f)
        os.rename(tmp, os.path.join(self.dir, "firmware.json"))

    def choose(self):
        """Apply the boot rule to the GRUB environment on the boot partition."""
        if self.host["role"] != "terminal":
            return None
        grubenv = os.path.join(self.dir, "boot", "grub", "grubenv")
        slot, one_shot = choose_entry(read_env(grubenv))
        if one_shot:
            # GRUB saves an empty next_entry before it boots: a failed boot cannot repeat it.
            subprocess.run(["grub-editenv", grubenv, "set", "next_entry="], check=False)
        self.log(f"boot rule chose slot {slot}" + (" (one-shot next_entry, now cleared)" if one_shot else ""))
        return slot

    def mount_root(self, slot):
        if slot is None:
            base, upper, work = self.lab["rootfs"], os.path.join(self.dir, "upper"), os.path.join(self.dir, "work")
            cmd = ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={base},upperdir={upper},workdir={work}", self.root]
        else:
            cmd = ["mount", self.host["disk"]["system_" + slot.lower()], self.root]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            self.log(f"cannot mount the root file system: {proc.stderr.strip()}")
        return proc.returncode == 0

    def nspawn_command(self):
        lab, host = self.lab, self.host
        cmd = ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--console=passive",
               "--link-journal=no", f"--network-namespace-path=/run/netns/{host['netns']}",
               f"--machine={host['netns']}", f"--hostname={self.name}", f"--uuid={host['uuid']}",
               "-D", self.root, f"--bind-ro={lab['dir']}/authorized_keys:/root/.ssh/authorized_keys"]
        if host["role"] == "terminal":
            disk = host["disk"]
            cmd += [f"--bind={self.dir}/boot:/boot", f"--bind={self.dir}/state:/var/lib/p2pfleet"]
            for label, dev in disk.items():
                cmd.append(f"--bind={dev}")
                if label != "disk":
                    # what udev would make on a real terminal (no udev runs in a container)
                    cmd.append(f"--bind={dev}:/dev/disk/by-partlabel/{label}")
            cmd += [f"--bind={dev}" for dev in host.get("extra_disks", [])]
        else:
            cmd.append(f"--bind-ro={lab['images']}:/srv/images")
        return cmd

    def boot_once(self, slot):
        """Boot and run until the host powers off or reboots; returns the exit status or None."""
        if not self.mount_root(slot):
            return None
        try:
            self.nspawn = subprocess.Popen(self.nspawn_command(), stdin=subprocess.DEVNULL)
            if self.stopping:                  # SIGTERM came while the root was being mounted
                self.nspawn.send_signal(signal.SIGTERM)
            self.publish(state="running", slot=slot, boots=self.status["boots"] + 1, since=time.time())
            return self.nspawn.wait()
        finally:
            self.nspawn = None
            subprocess.run(["umount", self.root], check=False)

    def run(self):
        while not self.stopping:
            slot = self.choose()
            self.publish(state="booting", slot=slot)
            status = self.boot_once(slot)
            if self.stopping or status == 0:
                self.log("powered off")
                break
            if status == EXIT_REBOOT:
                self.log("rebooting")
                self.status["failed_boots"] = 0
                continue
            failed = self.status["failed_boots"] + 1
            self.publish(failed_boots=failed)
            self.log(f"boot of slot {slot} failed (status {status}): rebooting, like a kernel panic")
            if failed >= MAX_FAILED_BOOTS:
                self.log(f"{failed} failed boots in a row: halted")
                self.publish(state="halted")
                return
            time.sleep(1)
        self.publish(state="off")

    def on_term(self, *_):
        self.stopping = True
        if self.nspawn:
            self.nspawn.send_signal(signal.SIGTERM)        # nspawn asks systemd to power off

    def on_hup(self, *_):
        init = self.container_init()
        if init:
            os.kill(init, signal.SIGINT)                   # ctrl-alt-del: systemd reboots

    def container_init(self):
        nspawn = self.nspawn
        if not nspawn:
            return None
        try:
            children = open(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children").read().split()
        except OSError:
            return None
        return int(children[0]) if children else None


def private_mounts(labdir, name):
    """A mount namespace of this process's own, with nothing propagating out of it.

    It starts as a copy of the machine's, with every lab's mounts in it (the terminals' boot
    and state partitions): those copies go, but for this host's own. Kept, they held the disks
    of other labs (and other hosts) busy for as long as this host ran, and a lab taken down
    meanwhile could not release its loop devices."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) failed")
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    labs = os.path.dirname(os.path.abspath(labdir)) + "/"
    own = os.path.join(os.path.abspath(labdir), "hosts", name) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in reversed(points):                      # the deepest first
        if point.startswith(labs) and not point.startswith(own):
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


def main(labdir, name):
    private_mounts(labdir, name)
    firmware = Firmware(labdir, name)
    signal.signal(signal.SIGTERM, firmware.on_term)
    signal.signal(signal.SIGINT, firmware.on_term)
    signal.signal(signal.SIGHUP, firmware.on_hup)
    firmware.run()


if __name__ == "__main__":
    main(*sys.argv[1:])
