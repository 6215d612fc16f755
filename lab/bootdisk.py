"""A small UEFI disk that real GRUB boots under QEMU and OVMF: the proof that the
collection's GRUB configuration (roles/swarm_client/templates/p2pfleet-grub.cfg.j2) follows
the boot rule the virtual lab's firmware applies.

    GPT disk:  1 ESP (FAT): EFI/BOOT/BOOTX64.EFI (grub-mkstandalone), grub/grub.cfg (the
                            collection's template, rendered), grub/grubenv
               2 system_a (ext2): /vmlinuz (a Debian kernel), /initrd.img that prints
                            "P2PFLEET-BOOTED slot=A" on the serial console and reboots
               3 system_b (ext2): the same for B, or a *broken* B whose init dies (the
                            kernel panics and, with panic=1, reboots)

One ``boot()`` is one power-on: QEMU runs with ``-no-reboot``, so the guest's reboot (or
panic) ends it, and the next ``boot()`` is the next boot, with the same disk and the same
OVMF variable store. Software emulation (TCG): about 10 s a boot.
"""
import glob
import gzip
import json
import os
import shutil
import stat
import subprocess
import time

import jinja2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = os.path.join(ROOT, "roles", "swarm_client", "templates", "p2pfleet-grub.cfg.j2")
CACHE = os.environ.get("P2PFLEET_QEMU_CACHE", "/var/cache/p2pfleet-qemu")
KERNEL_PACKAGE = "linux-image-cloud-amd64"
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
ESP_SERIAL = "5046-4c54"  # the ESP's FAT volume id, which GRUB calls its fs-uuid (lower case)
# Built into the GRUB image: once the prefix points at the ESP, nothing can be loaded from
# the image's memdisk any more.
GRUB_MODULES = ("part_gpt fat ext2 normal configfile search search_fs_uuid regexp loadenv linux echo test "
                "gzio serial terminal")
MIB = 1 << 20
SECTOR = 512
LAYOUT = (("esp", 16, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"), ("system_a", 24, None), ("system_b", 24, None))
TOOLS = ("qemu-system-x86_64", "grub-mkstandalone", "mformat", "mcopy", "mke2fs", "sfdisk", "grub-editenv")


def missing_tools() -> list:
    found = [t for t in TOOLS if shutil.which(t) is None]
    if not os.path.exists(OVMF_CODE):
        found.append("ovmf")
    if not os.path.exists("/bin/busybox") or "static" not in _file_kind("/bin/busybox"):
        found.append("busybox-static")
    return found


def _file_kind(path) -> str:
    with open(path, "rb") as f:
        head = f.read(4096)
    # A static ELF has no PT_INTERP; looking for the loader's name is enough here.
    return "dynamic" if b"/lib64/ld-linux" in head or b"ld-linux-x86-64" in head else "static"


def _run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


def kernel() -> str:
    """A Debian kernel, extracted once from its package into the cache."""
    os.makedirs(CACHE, exist_ok=True)
    found = sorted(glob.glob(os.path.join(CACHE, "vmlinuz-*")))
    if found:
        return found[-1]
    debs = glob.glob(os.path.join(CACHE, "linux-image-*.deb"))
    if not debs:
        package = _kernel_package()
        try:
            _run(["apt-get", "download", package], cwd=CACHE)
        except subprocess.CalledProcessError:
            _run(["apt-get", "update", "-qq"])
            _run(["apt-get", "download", package], cwd=CACHE)
        debs = glob.glob(os.path.join(CACHE, "linux-image-*.deb"))
    unpacked = os.path.join(CACHE, "unpacked")
    _run(["dpkg-deb", "-x", debs[0], unpacked])
    vmlinuz = glob.glob(os.path.join(unpacked, "boot", "vmlinuz-*"))[0]
    target = os.path.join(CACHE, os.path.basename(vmlinuz))
    shutil.copy(vmlinuz, target)
    shutil.rmtree(unpacked)
    return target


def _kernel_package() -> str:
    out = subprocess.run(["apt-cache", "depends", KERNEL_PACKAGE], capture_output=True, text=True).stdout
    if "Depends:" not in out:
        _run(["apt-get", "update", "-qq"])
        out = subprocess.run(["apt-cache", "depends", KERNEL_PACKAGE], capture_output=True, text=True).stdout
    return [line.split(":", 1)[1].strip() for line in out.splitlines() if "Depends:" in line][0]


def _cpio(entries) -> bytes:
    """A newc cpio archive; entries are (name, mode, data or (major, minor) for a device)."""
    out, ino = bytearray(), 1

    def field(v):
        return f"{v:08X}".encode()

    for name, mode, data in list(entries) + [("TRAILER!!!", 0, b"")]:
        rmajor = rminor = 0
        if isinstance(data, tuple):
            rmajor, rminor = data
            data = b""
        name_b = name.encode() + b"\0"
        header = b"070701" + b"".join(field(v) for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, rmajor, rminor, len(name_b), 0))
        out += header + name_b
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
        ino += 1
    return bytes(out)


def initramfs(slot: str, broken: bool) -> bytes:
    if broken:
        script = f"#!/bin/busybox sh\n/bin/busybox echo P2PFLEET-BROKEN slot={slot}\nexit 1\n"
    else:
        script = (f"#!/bin/busybox sh\n/bin/busybox echo P2PFLEET-BOOTED slot={slot}\n"
                  "/bin/busybox reboot -f\n")
    with open("/bin/busybox", "rb") as f:
        busybox = f.read()
    entries = [("bin", stat.S_IFDIR | 0o755, b""), ("dev", stat.S_IFDIR | 0o755, b""),
               ("dev/console", stat.S_IFCHR | 0o600, (5, 1)), ("bin/busybox", stat.S_IFREG | 0o755, busybox),
               ("init", stat.S_IFREG | 0o755, script.encode())]
    return gzip.compress(_cpio(entries), compresslevel=1)


def render_grub_cfg(partitions) -> str:
    with open(TEMPLATE, encoding="utf-8") as f:
        template = jinja2.Template(f.read(), undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    slots = [{"entry": name, "partition": number, "title": f"System {name}",
              "cmdline": f"console=ttyS0 panic=1 loglevel=3 rdinit=/init p2pfleet_slot={name}"}
             for name, number in partitions]
    return template.render(ansible_managed="p2pfleet.imaging boot proof", swarm_client_grub_slots=slots,
                           swarm_client_grub_boot_fs_uuid=ESP_SERIAL, swarm_client_grub_timeout=0)


class BootDisk:
    def __init__(self, workdir: str, broken_b: bool = False):
        self.workdir = workdir
        self.disk = os.path.join(workdir, "disk.img")
        self.vars = os.path.join(workdir, "OVMF_VARS.fd")
        self.serial_logs = []
        self._build(broken_b)

    def _build(self, broken_b):
        w = self.workdir
        vmlinuz = kernel()
        offsets = {}
        total = 1 + sum(size for _, size, _ in LAYOUT) + 1
        with open(self.disk, "wb") as f:
            f.truncate(total * MIB)
        script = "label: gpt\n" + "".join(
            f"size={size}MiB, name={name}" + (f", type={kind}" if kind else "") + "\n" for name, size, kind in LAYOUT)
        _run(["sfdisk", "-q", self.disk], input=script.encode())
        table = subprocess.run(["sfdisk", "--json", self.disk], check=True, capture_output=True, text=True).stdout
        for number, part in enumerate(json.loads(table)["partitiontable"]["partitions"], start=1):
            offsets[LAYOUT[number - 1][0]] = part["start"] * SECTOR
        self.esp_offset = offsets["esp"]

        for name, letter in (("system_a", "A"), ("system_b", "B")):
            root = os.path.join(w, name)
            os.makedirs(root)
            shutil.copy(vmlinuz, os.path.join(root, "vmlinuz"))
            with open(os.path.join(root, "initrd.img"), "wb") as f:
                f.write(initramfs(letter, broken=broken_b and letter == "B"))
            image = os.path.join(w, name + ".ext2")
            size = dict((n, s) for n, s, _ in LAYOUT)[name]
            _run(["mke2fs", "-q", "-t", "ext2", "-L", name, "-d", root, image, f"{size}M"])
            self._write_at(image, offsets[name])

        embedded = os.path.join(w, "embedded.cfg")
        with open(embedded, "w") as f:
            f.write(f"search --no-floppy --fs-uuid --set=root {ESP_SERIAL}\nset prefix=($root)/grub\n"
                    "configfile $prefix/grub.cfg\n")
        efi = os.path.join(w, "BOOTX64.EFI")
        _run(["grub-mkstandalone", "-O", "x86_64-efi", "-o", efi, f"--modules={GRUB_MODULES}",
              f"boot/grub/grub.cfg={embedded}"])
        cfg = os.path.join(w, "grub.cfg")
        with open(cfg, "w") as f:
            f.write(render_grub_cfg([("A", 2), ("B", 3)]))
        grubenv = os.path.join(w, "grubenv")
        _run(["grub-editenv", grubenv, "create"])
        esp = os.path.join(w, "esp.img")
        with open(esp, "wb") as f:
            f.truncate(LAYOUT[0][1] * MIB)
        _run(["mformat", "-i", esp, "-N", ESP_SERIAL.replace("-", ""), "-v", "ESP", "::"])
        _run(["mmd", "-i", esp, "::/EFI", "::/EFI/BOOT", "::/grub"])
        _run(["mcopy", "-i", esp, efi, "::/EFI/BOOT/BOOTX64.EFI"])
        _run(["mcopy", "-i", esp, cfg, "::/grub/grub.cfg"])
        _run(["mcopy", "-i", esp, grubenv, "::/grub/grubenv"])
        self._write_at(esp, self.esp_offset)
        shutil.copy(OVMF_VARS, self.vars)

    def _write_at(self, image, offset):
        with open(image, "rb") as src, open(self.disk, "r+b") as dst:
            dst.seek(offset)
            shutil.copyfileobj(src, dst, 4 * MIB)

    # -- the ESP's files, from the host, between boots (as a technician or the OS would) --
    def _esp(self):
        return f"{self.disk}@@{self.esp_offset}"

    def get(self, esp_path: str, local: str) -> str:
        """Copy a file out of the ESP (``grub/grubenv``); returns the local path."""
        _run(["mcopy", "-o", "-n", "-i", self._esp(), f"::/{esp_path}", local])
        return local

    def put(self, local: str, esp_path: str) -> None:
        _run(["mcopy", "-o", "-n", "-i", self._esp(), local, f"::/{esp_path}"])

    def boot(self, timeout: float = 120.0) -> str:
        """Power on once; the slot that booted ("A", "B"), or "panic" for a boot that died."""
        cmd = ["qemu-system-x86_64", "-machine", "q35", "-m", "256", "-nographic", "-no-reboot",
               "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
               "-drive", f"if=pflash,format=raw,file={self.vars}",
               "-drive", f"file={self.disk},format=raw,if=virtio", "-net", "none"]
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            self.serial_logs.append(out.decode(errors="replace"))
            raise AssertionError(f"no boot result within {timeout:g} s; serial console:\n"
                                 f"{self.serial_logs[-1][-3000:]}") from None
        text = out.decode(errors="replace")
        self.serial_logs.append(text)
        self.last_boot_seconds = time.monotonic() - started
        if "P2PFLEET-BOOTED slot=" in text:
            return text.split("P2PFLEET-BOOTED slot=", 1)[1][:1]
        if "Kernel panic" in text or "P2PFLEET-BROKEN" in text:
            return "panic"
        raise AssertionError(f"the boot ended without a result; serial console:\n{text[-3000:]}")
