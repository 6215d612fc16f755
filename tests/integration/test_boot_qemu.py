"""Real GRUB under real UEFI firmware (QEMU + OVMF, software emulation) follows the
collection's boot rule, driven between boots by the same GRUB backend the boot_slot module
uses: a one-shot boot happens once, a confirmed slot stays, a broken slot falls back, and an
empty environment block still boots the confirmed slot.

Each boot is one QEMU run (``-no-reboot``); the GRUB environment block lives on the ESP and
is read and written from the host between boots."""
import os
import subprocess

import pytest

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import boot
from lab import bootdisk

MISSING = bootdisk.missing_tools() if os.geteuid() == 0 else ["root"]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} (make deps installs them)")]


class Terminal:
    """The disk, seen the way the terminal's own OS sees /boot/grub between boots."""

    def __init__(self, workdir, broken_b=False):
        self.disk = bootdisk.BootDisk(str(workdir), broken_b=broken_b)
        self.local = workdir / "host-view"
        self.local.mkdir()
        self.grubenv = str(self.local / "grubenv")

    def backend(self):
        """Fetch grubenv (and the default file, if any) from the ESP into a GRUB backend."""
        self.disk.get("grub/grubenv", self.grubenv)
        default = self.local / "p2pfleet-default.cfg"
        try:
            self.disk.get("grub/p2pfleet-default.cfg", str(default))
        except subprocess.CalledProcessError:  # not written yet: nothing to fetch
            pass
        return boot.GrubBackend(self.grubenv)

    def save(self):
        self.disk.put(self.grubenv, "grub/grubenv")
        default = self.local / "p2pfleet-default.cfg"
        if default.exists():
            self.disk.put(str(default), "grub/p2pfleet-default.cfg")

    def boots(self, count):
        return [self.disk.boot() for _ in range(count)]


@pytest.fixture(scope="module")
def terminal(tmp_path_factory):
    return Terminal(tmp_path_factory.mktemp("qemu-ab"))


def test_a_fresh_terminal_boots_slot_a(terminal):
    assert terminal.boots(1) == ["A"], terminal.disk.serial_logs[-1][-2000:]


def test_a_one_shot_boots_b_once_then_a_again(terminal):
    backend = terminal.backend()
    backend.try_next("B")
    terminal.save()
    assert terminal.boots(2) == ["B", "A"]
    # GRUB itself cleared next_entry before booting B (save_env on the ESP).
    assert terminal.backend().query().pending is None


def test_a_confirmed_slot_stays_and_survives_an_empty_environment_block(terminal):
    backend = terminal.backend()
    backend.try_next("B")
    backend.confirm("B")
    terminal.save()
    assert terminal.boots(2) == ["B", "B"]
    # A power cut while grub-editenv rewrote the block leaves it empty: still B.
    open(terminal.grubenv, "w").close()
    terminal.save()
    assert terminal.boots(1) == ["B"]
    backend = terminal.backend()
    backend.confirm("A")  # leave the terminal as the next test expects it
    terminal.save()


def test_a_broken_slot_tried_once_falls_back_to_the_confirmed_one(tmp_path_factory):
    terminal = Terminal(tmp_path_factory.mktemp("qemu-broken"), broken_b=True)
    backend = terminal.backend()
    backend.confirm("A")
    backend.try_next("B")
    terminal.save()
    assert terminal.boots(2) == ["panic", "A"], terminal.disk.serial_logs[-2][-2000:]
    state = terminal.backend().query()
    assert (state.default, state.pending) == ("A", None)
