"""The three boot backends, each driving its real tool: grub-editenv on a GRUB environment
block, efibootmgr on UEFI variables (a directory, through EFIVARFS_PATH), fw_setenv on a
U-Boot environment image. One behaviour, three mechanisms."""
import os
import shutil
import struct
import subprocess

import pytest

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import boot
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.boot import BootError

EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"


def grub(tmp_path):
    if not shutil.which("grub-editenv"):
        pytest.skip("grub-editenv (grub-common) is not installed")
    grubenv = tmp_path / "grub" / "grubenv"
    grubenv.parent.mkdir()
    subprocess.run(["grub-editenv", str(grubenv), "create"], check=True)
    backend = boot.GrubBackend(str(grubenv))
    backend.confirm("A")
    return backend


def efi(tmp_path):
    if not shutil.which("efibootmgr"):
        pytest.skip("efibootmgr is not installed")
    vars_dir = tmp_path / "efivars"
    vars_dir.mkdir()

    def var(name, data):
        (vars_dir / f"{name}-{EFI_GLOBAL}").write_bytes(struct.pack("<I", 7) + data)

    for number, label in ((1, "p2pfleet A"), (2, "p2pfleet B")):
        description = (label + "\0").encode("utf-16-le")
        end_of_path = b"\x7f\xff\x04\x00"
        var(f"Boot{number:04X}", struct.pack("<IH", 1, len(end_of_path)) + description + end_of_path)
    var("BootOrder", struct.pack("<HH", 1, 2))
    var("BootCurrent", struct.pack("<H", 1))
    return boot.EfiBackend(env={**os.environ, "EFIVARFS_PATH": str(vars_dir) + "/"})


def uboot(tmp_path):
    if not shutil.which("fw_setenv") or not shutil.which("mkenvimage"):
        pytest.skip("fw_setenv (libubootenv-tool) or mkenvimage (u-boot-tools) is not installed")
    (tmp_path / "env.txt").write_text("bootdelay=1\np2pfleet_default=A\n")
    subprocess.run(["mkenvimage", "-s", "0x4000", "-o", str(tmp_path / "env.bin"), str(tmp_path / "env.txt")],
                   check=True)
    (tmp_path / "fw_env.config").write_text(f"{tmp_path / 'env.bin'} 0x0000 0x4000\n")
    return boot.UBootBackend(str(tmp_path / "fw_env.config"))


ENTRIES = {"grub": ("A", "B"), "efi": ("p2pfleet A", "p2pfleet B"), "uboot": ("A", "B")}


@pytest.mark.parametrize("make", [grub, efi, uboot], ids=["grub", "efi", "uboot"])
def test_try_once_then_confirm_and_never_reject_the_default(tmp_path, make):
    backend = make(tmp_path)
    a, b = ENTRIES[backend.name]
    state = backend.query()
    assert (state.default, state.pending) == (a, None)

    assert backend.try_next(b) is True
    assert backend.try_next(b) is False
    state = backend.query()
    assert (state.default, state.pending, state.next_boot()) == (a, b, b)

    assert backend.reject(b) is True  # a health check failed before the reboot: drop the try
    assert backend.query().pending is None and backend.reject(b) is False

    backend.try_next(b)
    assert backend.confirm(b) is True
    assert backend.confirm(b) is False
    state = backend.query()
    assert (state.default, state.pending) == (b, None)

    with pytest.raises(BootError, match="is the confirmed default"):
        backend.reject(b)
    with pytest.raises(BootError):
        backend.try_next("no such entry" if backend.name == "efi" else "bad entry!")
    assert backend.query().default == b


def test_grub_boots_the_confirmed_slot_even_from_an_empty_environment_block(tmp_path):
    backend = grub(tmp_path)
    backend.try_next("B")
    backend.confirm("B")
    # A power cut while grub-editenv rewrote the block leaves it empty (it truncates, then writes).
    open(backend.grubenv, "w").close()
    assert backend.query().default == "B"
    assert (tmp_path / "grub" / "p2pfleet-default.cfg").read_text() == 'set p2pfleet_default="B"\n'


def test_detect_and_unknown_backends(tmp_path):
    grubenv = tmp_path / "grubenv"
    grubenv.write_text(boot.GRUBENV_HEADER)
    assert boot.detect(str(grubenv)) == "grub"
    with pytest.raises(BootError, match="unknown boot backend 'lilo'"):
        boot.backend("lilo")
    assert boot.parse_grub_env("") == {} and boot.parse_grub_env("garbage") == {}


def test_grub_recreates_an_emptied_block_when_it_must_write(tmp_path):
    backend = grub(tmp_path)
    backend.confirm("B")
    open(backend.grubenv, "w").close()
    assert backend.try_next("A") is True
    assert boot.read_grub_env(backend.grubenv)["next_entry"] == "A"
    assert os.path.getsize(backend.grubenv) == boot.GRUBENV_SIZE
