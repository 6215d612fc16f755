"""Bringing a lab up and down, and talking to its hosts.

A lab lives in ``LABS/<name>/``: ``state.json`` (what was built), the SSH key, the inventory,
and per host ``hosts/<host>/`` (disk file, mount points, firmware log and status). Teardown
does not trust the state file alone: it finds the lab's processes, mounts, loop devices and
namespaces by the lab's directory and prefix, so a half-built lab comes down as cleanly as a
whole one, and nothing of another lab or another user is touched.
"""
import concurrent.futures
import errno
import fcntl
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

from . import disk, inventory, net, rootfs
from .sh import LabError, run

LABS = os.environ.get("P2PFLEET_LAB_DIR", "/var/lib/p2pfleet-lab")
WHEELHOUSE = os.path.join(rootfs.CACHE, "wheelhouse")
TOOLS = ("debootstrap", "systemd-nspawn", "grub-editenv", "sgdisk", "mkfs.ext4", "losetup",
         "ip", "tc", "ssh", "ssh-keygen", "mount")
LIGHT_TOOLS = ("sgdisk", "losetup", "partx", "ip", "tc")
BOOT_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0
# Detached loop devices go when their last user does, after the writeback of what the hosts
# wrote (hundreds of MB dirty): on a loaded machine that was seen to take 30 to 90 s.
# Bounded, and only waited for when needed.
LOOP_RELEASE_TIMEOUT = 300.0
SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=3")


def check_name(name):
    if not re.fullmatch(r"[a-z][a-z0-9]{0,15}", name or ""):
        raise LabError(f"bad lab name {name!r}: 1-16 lower-case letters and digits, starting with a letter")
    return name


def lab_dir(name):
    return os.path.join(LABS, check_name(name))


def load(name):
    try:
        with open(os.path.join(lab_dir(name), "state.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        raise LabError(f"lab {name!r} is not up (lab up --lab {name})") from None


def save(state):
    tmp = os.path.join(state["dir"], "state.json.tmp")
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.rename(tmp, os.path.join(state["dir"], "state.json"))


def preflight(tools=TOOLS):
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, loop devices, mounts)")
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        raise LabError(f"missing tools: {', '.join(missing)} (make deps installs them)")


def terminal_names(count):
    width = max(2, len(str(count)))
    return [f"t{i:0{width}d}" for i in range(1, count + 1)]


def rooms_of(names, rooms):
    """Split terminals into ``rooms`` contiguous, nearly equal groups: {name: room}."""
    return {name: 1 + i * rooms // len(names) for i, name in enumerate(names)}


def allocate_number():
    """The lowest lab number no lab (ours or another checkout's) uses on this machine."""
    used = set()
    for entry in os.listdir(LABS):
        try:
            with open(os.path.join(LABS, entry, "state.json")) as f:
                used.add(json.load(f)["number"])
        except (OSError, ValueError, KeyError):
            continue
    for line in run("ip", "netns", "list").splitlines() + run("ip", "-o", "link", "show").splitlines():
        used.update(int(n) for n in re.findall(r"\bpfl(\d\d)-", line))
    for number in range(net.MAX_LABS):
        if number not in used:
            return number
    raise LabError(f"all {net.MAX_LABS} lab numbers are in use (lab down an old lab)")


def up(name, terminals=4, rooms=1, rate=None, uplink=None, slot_size="1G", log=sys.stderr, light=False):
    """Build the lab and boot every host; returns its state. On any failure, nothing is left.

    ``light``: the same network, caps and addresses, and every terminal's disk, but the hosts
    are bare network namespaces: no root file system, firmware, systemd, sshd or inventory.
    What runs in a host is what is started there with ``ip netns exec``: the fleet benchmark
    runs its agents so, and 40 to 64 terminals fit a 2-core machine.
    """
    check_name(name)
    if not 1 <= rooms <= net.MAX_ROOMS:
        raise LabError(f"--rooms must be between 1 and {net.MAX_ROOMS}")
    if not rooms <= terminals <= rooms * net.MAX_TERMINALS_PER_ROOM:
        raise LabError(f"--terminals must be between --rooms ({rooms}) and {rooms * net.MAX_TERMINALS_PER_ROOM}")
    rate_bits, uplink_bits, slot_bytes = net.parse_rate(rate), net.parse_rate(uplink), disk.parse_size(slot_size)
    preflight(LIGHT_TOOLS if light else TOOLS)
    if os.path.exists(lab_dir(name)):
        raise LabError(f"lab {name!r} is already up (lab down --lab {name} first)")
    net.prepare_host()
    started = time.monotonic()
    base = images = None
    if not light:
        base = rootfs.base_rootfs(log)
        disk.check_slot_size(base, slot_bytes)
        images = disk.ensure_images(base, disk.images_dir(rootfs.CACHE, os.path.basename(base), slot_bytes),
                                    slot_bytes)

    os.makedirs(LABS, exist_ok=True)
    with open(os.path.join(LABS, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        directory = lab_dir(name)
        if os.path.exists(directory):
            raise LabError(f"lab {name!r} is already up (lab down --lab {name} first)")
        number = allocate_number()
        os.makedirs(os.path.join(directory, "hosts"))
        prefix = f"pfl{number:02d}"
        state = {"name": name, "number": number, "prefix": prefix, "dir": directory, "admin": f"{prefix}-admin",
                 "network": str(net.lab_network(number)), "rootfs": base, "images": images,
                 "rate": rate_bits, "uplink": uplink_bits, "rooms": rooms, "slot_size": slot_bytes,
                 "light": light, "key": None if light else os.path.join(directory, "id_ed25519"),
                 "inventory": None if light else os.path.join(directory, "inventory.yml"), "hosts": {}}
        save(state)
    try:
        phases = build(state, terminals)
        took = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in phases.items())
        print(f"lab {name} up{' (light)' if light else ''}: {terminals} terminals in {rooms} room(s) in "
              f"{time.monotonic() - started:.1f} s ({took})", file=log, flush=True)
        return state
    except BaseException:
        print(f"lab {name}: bring-up failed, tearing down", file=log, flush=True)
        try:
            down(name)
        except Exception as error:           # the bring-up's own error is the one to report
            print(f"lab {name}: teardown after the failure: {error}", file=log, flush=True)
        raise


def build(state, terminals):
    """Network, hosts, disks, boot (a light lab: network and disks); returns how long each phase took."""
    prefix, number, directory, light = state["prefix"], state["number"], state["dir"], state["light"]
    phases, started = {}, time.monotonic()
    if not light:
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"p2pfleet-lab-{state['name']}", "-f", state["key"])
        shutil.copyfile(state["key"] + ".pub", os.path.join(directory, "authorized_keys"))
        os.chmod(os.path.join(directory, "authorized_keys"), 0o600)
    net.build(prefix, number, state["rooms"], state["uplink"], state["admin"])

    names = terminal_names(terminals)
    hosts = {"server": {"role": "server", "room": 0, "index": 10}}
    per_room = {}
    for name, room in rooms_of(names, state["rooms"]).items():
        per_room[room] = per_room.get(room, 0) + 1
        hosts[name] = {"role": "terminal", "room": room, "index": 10 + per_room[room]}
    token = uuid.uuid4()                     # machine ids differ per host and per lab
    for name, host in hosts.items():
        host["netns"] = f"{prefix}-{name}"
        host["uuid"] = str(uuid.uuid5(token, name))
        host["address"] = net.add_host(prefix, number, name, host["room"], host["index"], state["rate"])
        os.makedirs(os.path.join(directory, "hosts", name))
        if light:
            continue
        # mount points: the root, and either the server's overlay or a terminal's boot and state
        for sub in ("root",) + (("boot", "state") if host["role"] == "terminal" else ("upper", "work")):
            os.makedirs(os.path.join(directory, "hosts", name, sub))
    state["hosts"] = hosts
    save(state)
    phases["network"], started = time.monotonic() - started, time.monotonic()

    def prepare(name):
        hostdir = os.path.join(directory, "hosts", name)
        disk.make_disk(os.path.join(hostdir, "disk.img"), state["slot_size"])
        parts = disk.attach(os.path.join(hostdir, "disk.img"))
        hosts[name]["disk"] = parts
        if light:                        # the partitions as they are: nothing boots from them
            return
        release_1 = os.path.join(state["images"], "release-1.img")
        disk.format_boot(parts["boot"], os.path.join(hostdir, "boot"))
        disk.format_state(parts["p2pfleet_state"], os.path.join(hostdir, "state"))
        disk.write_image(release_1, parts["system_a"])

    # sgdisk sleeps a second after writing a table: a light lab's disks, with nothing to write
    # after it, are made 16 at a time
    with concurrent.futures.ThreadPoolExecutor(16 if light else 4) as pool:
        list(pool.map(prepare, [n for n, h in hosts.items() if h["role"] == "terminal"]))
    save(state)
    phases["disks"], started = time.monotonic() - started, time.monotonic()
    if light:
        return phases
    for name in hosts:
        start_firmware(state, name)
    wait_booted(state, list(hosts), BOOT_TIMEOUT)
    phases["boot"] = time.monotonic() - started
    inventory.write(state, state["inventory"], WHEELHOUSE)
    return phases


def start_firmware(state, name):
    """Start the host's firmware process: it applies the boot rule and boots (a cold boot)."""
    hostdir = os.path.join(state["dir"], "hosts", name)
    with open(os.path.join(hostdir, "firmware.log"), "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lab.firmware", state["dir"], name],
                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    with open(os.path.join(hostdir, "firmware.pid"), "w") as f:
        f.write(str(proc.pid))
    return proc.pid


def refuse_light(state, what):
    """A light lab's hosts are bare network namespaces: say so in one line, naming what is missing."""
    if state.get("light"):
        raise LabError(f"lab {state['name']} is light (bare network namespaces): {what}")


def check_host(state, name):
    if name not in state["hosts"]:
        raise LabError(f"no host {name!r} in lab {state['name']} (hosts: {', '.join(state['hosts'])})")
    return state["hosts"][name]


def host_processes(state, name):
    """Pids of one host as its power supply feeds them: its firmware and what the firmware runs
    (systemd-nspawn, mount, grub-editenv: the firmware's session), an nspawn of the host that
    outlived its firmware, and every process in the host's network namespace (the container's,
    and anything run there). Nothing of another host, lab or user: a process that merely names
    a file of the host (``tail -f firmware.log``) is not the host's."""
    netns = state["hosts"][name]["netns"]
    try:
        namespace = os.stat(f"/run/netns/{netns}").st_ino
    except OSError:
        namespace = None
    firmware = firmware_pid(state, name)
    hostdir = os.path.join(state["dir"], "hosts", name).encode() + b"/"
    machine = f"--machine={netns}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                session = int(f.read().rsplit(b")", 1)[1].split()[4])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            inside = namespace is not None and os.stat(f"/proc/{entry}/ns/net").st_ino == namespace
        except (OSError, IndexError, ValueError):
            continue                                   # gone meanwhile, or a zombie
        nspawn = machine in args and any(arg.startswith(hostdir) for arg in args)
        if inside or nspawn or (firmware and (pid == firmware or session == firmware)):
            pids.append(pid)
    return pids


def is_powered(state, name):
    """On: its firmware runs, or anything of it does (a host whose firmware alone was killed)."""
    return bool(firmware_pid(state, name) or host_processes(state, name))


def power_off(state, name, timeout=STOP_TIMEOUT):
    """Cut the host's power: SIGKILL its firmware, its systemd-nspawn and every process in its
    network namespace, with no clean shutdown (systemd, the agent and sshd get no SIGTERM).

    The firmware goes first, so nothing boots the host again. The host's disk (loop device and
    partitions) and its network namespace stay, so ``power_on`` brings it back; its slots are
    released (the root file system is unmounted with the firmware's mount namespace) before
    this returns. Returns False if the host was off already.
    """
    check_host(state, name)
    refuse_light(state, "no firmware to power a host off or on")
    pids = host_processes(state, name)
    if not pids:
        net.link_down(state["hosts"][name]["netns"])      # a halted host's NIC too
        return False
    firmware = firmware_pid(state, name)
    deadline = time.monotonic() + timeout
    killed = set()
    while pids:
        if firmware in pids:                          # first: a live firmware would boot it again
            kill(firmware, signal.SIGKILL)
        for pid in pids:
            kill(pid, signal.SIGKILL)
        killed.update(pids)
        time.sleep(0.05)
        pids = host_processes(state, name)
        if pids and time.monotonic() > deadline:
            raise LabError(f"{name}: still running {timeout:.0f} s after its power was cut: "
                           f"process(es) {', '.join(map(str, pids))}")
    net.link_down(state["hosts"][name]["netns"])
    # a killed nspawn leaves its directory for mount propagation behind (the next nspawn of the
    # machine would reuse it); it is this host's alone
    shutil.rmtree(f"/run/systemd/nspawn/propagate/{state['hosts'][name]['netns']}", ignore_errors=True)
    status = firmware_status(state, name)
    status.update(state="off", power="cut", updated=time.time(), since=time.time())
    hostdir = os.path.join(state["dir"], "hosts", name)
    with open(os.path.join(hostdir, "firmware.log"), "a") as f:      # the console's last line
        f.write(f"\n{time.strftime('%H:%M:%S')} lab: power cut ({len(killed)} process(es) killed)\n")
    with open(os.path.join(hostdir, "firmware.json.power"), "w") as f:
        json.dump(status, f)
    os.rename(os.path.join(hostdir, "firmware.json.power"), os.path.join(hostdir, "firmware.json"))
    wait_released(state, name, deadline=time.monotonic() + timeout)
    return True


def wait_released(state, name, deadline):
    """Wait until no mount of the host's slots is left (its root went with the firmware's mount
    namespace, which the kernel tears down after the last process of it is gone)."""
    host = state["hosts"][name]
    if host["role"] != "terminal":
        return
    devices = [host["disk"][label] for label in disk.SLOT_LABELS.values()]
    while busy := [device for device in devices if in_use(device)]:
        if time.monotonic() > deadline:
            raise LabError(f"{name} is off but its slot(s) {', '.join(busy)} are still in use")
        time.sleep(0.1)


def power_on(state, name, wait=False, timeout=BOOT_TIMEOUT):
    """Power the host on: a new firmware applies the boot rule and boots, exactly as at a cold
    boot. A host that is half on (its firmware was killed but something of it runs) has its
    power cut first. With ``wait``, returns once its systemd has booted and sshd answers.
    Returns False if the host was on already."""
    check_host(state, name)
    refuse_light(state, "no firmware to power a host off or on")
    if firmware_pid(state, name):
        return False
    power_off(state, name)
    host = state["hosts"][name]
    net.link_up(host["netns"], state["number"], host["room"])
    start_firmware(state, name)
    if wait:
        wait_booted(state, [name], timeout)
    return True


def firmware_pid(state, name):
    """The pid of the host's firmware process, if it is alive and really ours."""
    try:
        pid = int(open(os.path.join(state["dir"], "hosts", name, "firmware.pid")).read())
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if state["dir"].encode() in cmdline and b"lab.firmware" in cmdline else None


def firmware_status(state, name):
    try:
        with open(os.path.join(state["dir"], "hosts", name, "firmware.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def is_up(state):
    """The lab's admin link exists: only then may the controller send to lab addresses."""
    return bool(run("ip", "link", "show", "dev", state["admin"], check=False))


def ssh_command(state, name, *command):
    host = check_host(state, name)
    refuse_light(state, "no host to ssh into")
    if not is_up(state):
        raise LabError(f"lab {state['name']} has no network (its admin link {state['admin']} is gone)")
    return ["ssh", "-i", state["key"], *SSH_OPTIONS, f"root@{host['address']}", *command]


def ssh(state, name, *command, timeout=60, stdin=None):
    """Run a command in a lab host over SSH; ``stdin`` is a file (or None for none)."""
    return subprocess.run(ssh_command(state, name, *command), stdin=stdin if stdin else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)


def wait_booted(state, names, timeout):
    """Wait until every host's systemd finished booting and answers over SSH, or fail naming them."""
    refuse_light(state, "nothing boots")
    deadline = time.monotonic() + timeout

    def wait(name):
        last = ""
        while time.monotonic() < deadline:
            try:
                proc = ssh(state, name, "systemctl", "is-system-running", "--wait", timeout=30)
                last = (proc.stdout + proc.stderr).strip()
                if proc.stdout.strip() in ("running", "degraded"):
                    return None
            except subprocess.TimeoutExpired:
                last = "ssh timed out"
            time.sleep(0.5)
        return f"{name} ({firmware_status(state, name).get('state', 'no firmware')}: {last or 'no answer'})"

    with concurrent.futures.ThreadPoolExecutor(max(1, len(names))) as pool:
        late = [r for r in pool.map(wait, names) if r]
    if late:
        raise LabError(f"not booted within {timeout:.0f} s: {', '.join(late)}")


def reboot(state, name):
    """Ctrl-alt-del for a running host; power on a host that is off."""
    check_host(state, name)
    refuse_light(state, "no host to reboot")
    pid = firmware_pid(state, name)
    if pid:
        os.kill(pid, signal.SIGHUP)
    else:
        power_on(state, name)


def flash(state, name, slot, image):
    """Write an image into a terminal's slot from outside, like a technician with a USB stick."""
    host = state["hosts"].get(name)
    if not host or host["role"] != "terminal":
        raise LabError(f"{name!r} is not a terminal of lab {state['name']}")
    if slot not in disk.SLOT_LABELS:
        raise LabError(f"bad slot {slot!r}: A or B")
    if os.sep not in image:
        refuse_light(state, f"no release images: give {image!r} as a path")
    path = image if os.sep in image else os.path.join(state["images"], image)
    if not os.path.isfile(path):
        raise LabError(f"no image {path}")
    device = host["disk"][disk.SLOT_LABELS[slot]]
    if in_use(device):
        raise LabError(f"slot {slot} of {name} is in use (the running root file system, or a job's): not written")
    disk.write_image(path, device)


def add_disk(state, name, size):
    """Give a terminal a second, blank disk of ``size`` bytes (a sparse file on a loop device),
    as a technician would plug one in: the terminal sees it as ``/dev/loopN`` from its next
    power-on (``power_on``), with no partitions. Returns the device."""
    host = state["hosts"].get(name)
    if not host or host["role"] != "terminal":
        raise LabError(f"{name!r} is not a terminal of lab {state['name']}")
    extra = host.setdefault("extra_disks", [])
    path = os.path.join(state["dir"], "hosts", name, f"disk{len(extra) + 2}.img")
    with open(path, "wb") as f:
        f.truncate(size)
    device = run("losetup", "--find", "--show", "--partscan", path).strip()
    extra.append(device)
    save(state)
    return device


def in_use(device):
    """Mounted in any namespace (a host's root is mounted in its firmware's), or claimed."""
    try:
        os.close(os.open(device, os.O_RDONLY | os.O_EXCL))
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return True
        raise
    return False


def build_image(state, release, broken=False):
    refuse_light(state, "no root file system to build images from")
    name = "broken.img" if broken else f"release-{release}.img"
    return disk.build_image(state["rootfs"], os.path.join(state["images"], name), release, state["slot_size"], broken)


def upgrade_image(state, source_release, release, package_mib=8):
    """release-RELEASE.img: release-SOURCE_RELEASE.img with a package upgraded inside (disk.upgrade_image)."""
    refuse_light(state, "no release images to upgrade")
    images = state["images"]
    return disk.upgrade_image(os.path.join(images, f"release-{source_release}.img"),
                              os.path.join(images, f"release-{release}.img"), release, package_mib)


def down(name):
    """Take the lab down: every process, mount, loop device, namespace and file of it.

    First a clean poweroff of every host; then whatever of the lab still runs is killed (a
    host caught half-way through its boot, say), so that no mount stays busy; then mounts,
    loop devices and namespaces go. What still remains after that is named in the error.
    """
    directory = lab_dir(name)
    if not os.path.isdir(directory):
        raise LabError(f"lab {name!r} is not up")
    try:
        with open(os.path.join(directory, "state.json")) as f:
            state = json.load(f)
    except (OSError, ValueError):
        state = None
    prefix = state["prefix"] if state else None
    if state:
        stop_hosts(state)
    deadline = time.monotonic() + STOP_TIMEOUT
    while (pids := lab_processes(directory, prefix)) and time.monotonic() < deadline:
        for pid in pids:
            kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    for mountpoint in reversed(mounts_under(directory)):
        if subprocess.run(["umount", mountpoint], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", mountpoint], capture_output=True)
    for device in disk.loops_backed_by(directory):
        run("losetup", "-d", device, check=False)
    # A loop device still in use when detached goes when its last user does (its partitions'
    # teardown takes seconds on a loaded machine): wait for that, from now.
    loops_gone_by = time.monotonic() + LOOP_RELEASE_TIMEOUT
    while disk.loops_backed_by(directory) and time.monotonic() < loops_gone_by:
        time.sleep(0.1)
    if state:
        net.destroy(prefix, state["admin"])
        for machine in glob.glob(f"/run/systemd/nspawn/propagate/{prefix}-*"):   # left by a killed nspawn
            shutil.rmtree(machine, ignore_errors=True)
    left = [f"process {pid}" for pid in lab_processes(directory, prefix)] + mounts_under(directory) + \
        disk.loops_backed_by(directory) + (net.lab_namespaces(prefix) if prefix else [])
    shutil.rmtree(directory)
    if left:
        raise LabError(f"lab {name} is down but left behind: {', '.join(left)}")


def stop_hosts(state):
    """SIGTERM every firmware: a clean poweroff of its host; wait for them (bounded).

    The signal is repeated each second: a host still starting (nspawn not yet listening)
    misses the first one.
    """
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        pids = [pid for pid in (firmware_pid(state, name) for name in state["hosts"]) if pid]
        if not pids:
            return
        for pid in pids:
            kill(pid, signal.SIGTERM)
        time.sleep(1.0)


def lab_processes(directory, prefix):
    """Pids of the lab: firmware and nspawn (the lab's directory is in their command line) and
    everything inside its hosts (in one of its network namespaces)."""
    namespaces = set()
    for netns in net.lab_namespaces(prefix) if prefix else []:
        try:
            namespaces.add(os.stat(f"/run/netns/{netns}").st_ino)
        except OSError:
            pass
    marker = directory.rstrip("/").encode() + b"/"
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            in_lab_netns = os.stat(f"/proc/{entry}/ns/net").st_ino in namespaces
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                in_lab_dir = marker in f.read()
        except OSError:
            continue
        if in_lab_netns or in_lab_dir:
            pids.append(int(entry))
    return pids


def kill(pid, sig):
    """Signal a process that may have exited in the meantime."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def mounts_under(directory):
    prefix = directory.rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(prefix)]


def status(state):
    """Rows for ``lab status``: host, role, room, address, power state (a light lab's hosts:
    ``netns``), booted slot, boots."""
    rows = []
    for name, host in state["hosts"].items():
        fw = firmware_status(state, name)
        if state.get("light"):
            power = "netns"
        elif firmware_pid(state, name):
            power = fw.get("state", "?")
        else:
            power = "halted" if fw.get("state") == "halted" else "off"
        rows.append((name, host["role"], f"room{host['room']}" if host["room"] else "core", host["address"],
                     power, fw.get("slot") or "-", str(fw.get("boots", 0))))
    return rows

