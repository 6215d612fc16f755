"""What `ansible-playbook --check` must not change on a lab, read on the hosts outside Ansible:
every file the roles and stages manage (path, type, mode, size, inode, mtime, and the bytes of
the small ones), the daemons' units (state, main PID, start time), the GRUB environment and
default file, and the bytes of every terminal's slot that is not running (the one a reimage
writes). The check-mode tests are in test_reimage.py, on its lab: the first before its first
reimage (nothing installed yet), the second right after it."""
import concurrent.futures
import hashlib

MANAGED = ("/opt/p2pfleet", "/etc/p2pfleet", "/etc/systemd/system/p2pfleet-agent.service",
           "/etc/systemd/system/p2pfleet-tracker.service", "/var/lib/p2pfleet", "/var/lib/p2pfleet-tracker",
           "/boot/grub")
# Files whose bytes are compared too; the rest (the engine, the virtualenv, the wheels) by
# inode, size and mtime, which any write through Ansible changes.
SMALL = ("/etc/p2pfleet", "/etc/systemd/system", "/var/lib/p2pfleet", "/var/lib/p2pfleet-tracker", "/boot/grub")
SNAPSHOT = (
    "for p in " + " ".join(MANAGED) + "; do [ -e $p ] && find $p -xdev -printf '%p %y %m %s %i %T@\\n'; done | sort; "
    "for p in " + " ".join(SMALL) + "; do [ -d $p ] && find $p -xdev -type f -size -2M -exec sha256sum {} +; done | sort; "
    "systemctl show --property=LoadState,ActiveState,SubState,MainPID,UnitFileState,ExecMainStartTimestampMonotonic "
    "p2pfleet-agent p2pfleet-tracker; "
    "grub-editenv /boot/grub/grubenv list 2>/dev/null; true")
# The seeding agent on the server rewrites its jobs' resume data on its own, whatever Ansible does.
OWN_WRITES = ("/var/lib/p2pfleet/jobs/",)


def snapshot(lab):
    """What check mode must not change, per host (the hosts read at the same time)."""
    def host_view(host):
        lines = lab.ssh(host, SNAPSHOT, timeout=120).splitlines()
        seen = [line for line in lines if not any(path in line for path in OWN_WRITES)]
        if host in lab.terminals:
            running = lab.firmware(host)["slot"]
            for slot, label in (("A", "system_a"), ("B", "system_b")):
                if slot != running:
                    seen.append(f"slot {slot}: {slot_digest(lab.state['hosts'][host]['disk'][label])}")
        return seen

    with concurrent.futures.ThreadPoolExecutor(len(lab.hosts)) as pool:
        views = {host: pool.submit(host_view, host) for host in lab.hosts}
        return {host: view.result() for host, view in views.items()}


def slot_digest(device):
    digest = hashlib.sha256()
    with open(device, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def assert_unchanged(before, after):
    for host in before:
        gone = sorted(set(before[host]) - set(after[host]))
        new = sorted(set(after[host]) - set(before[host]))
        assert not gone and not new, f"{host} changed in check mode:\n- " + "\n- ".join(gone) + "\n+ " + "\n+ ".join(new)
