"""The virtual lab's hosts answer real Ansible over SSH, and terminals boot the slot GRUB's rule picks.

Every step is a real one: images written into a terminal's loop-device partition, the GRUB
environment changed inside the terminal with grub-editenv, ``ansible.builtin.reboot``, and the
root file system checked to be the very partition of the expected slot.
"""
import pytest

from lab import lab as labmod

# What a terminal reports about its boot: release marker, the device of its root file system,
# the device of each slot partition, and its GRUB environment.
REPORT = ("cat /etc/lab-release; mountpoint -d /; stat -c %Hr:%Lr /dev/disk/by-partlabel/system_a "
          "/dev/disk/by-partlabel/system_b; grub-editenv /boot/grub/grubenv list")
GRUBENV = "/boot/grub/grubenv"


def booted(lab, host):
    """(release, slot) the terminal runs now, and its GRUB environment, read inside it over SSH."""
    lines = lab.ssh(host, REPORT).splitlines()
    release, root, slot_a, slot_b = lines[:4]
    slot = {slot_a: "A", slot_b: "B"}.get(root)
    assert slot, f"{host}'s root {root} is neither slot A ({slot_a}) nor slot B ({slot_b})"
    return release, slot, dict(line.split("=", 1) for line in lines[4:])


def reboot_with(lab, host, *grubenv_settings):
    """Set the GRUB environment inside the terminal, then ansible.builtin.reboot it."""
    tasks = [{"name": f"grub-editenv set {setting}",
              "ansible.builtin.command": f"grub-editenv {GRUBENV} set {setting}"} for setting in grubenv_settings]
    tasks.append({"name": "reboot", "ansible.builtin.reboot": {"reboot_timeout": 120}})
    lab.playbook(host, tasks)


@pytest.fixture
def on_release_1(lab):
    """A terminal back on slot A with saved_entry=A before and after the test."""
    def reset(host):
        release, slot, env = booted(lab, host)
        if (release, slot, env.get("saved_entry"), env.get("next_entry", "")) != ("1", "A", "A", ""):
            reboot_with(lab, host, "saved_entry=A", "next_entry=")
        assert booted(lab, host)[:2] == ("1", "A")
    used = []

    def use(host):
        reset(host)
        used.append(host)
        return host
    yield use
    for host in used:
        reset(host)


def test_ansible_ping_reaches_every_host(lab):
    results = lab.ansible("all", "ansible.builtin.ping")
    assert sorted(results) == sorted(lab.hosts)
    assert {host: r.get("ping") for host, r in results.items()} == {host: "pong" for host in lab.hosts}


def test_groups_of_the_inventory(lab):
    results = lab.ansible("all", "ansible.builtin.debug", "var=group_names")
    groups = {host: sorted(r["group_names"]) for host, r in results.items()}
    assert groups["server"] == ["seeders", "tracker"]
    rooms = {host: [g for g in groups[host] if g.startswith("room")] for host in lab.terminals}
    assert all("terminals" in groups[host] for host in lab.terminals)
    assert sorted(rooms.values()) == [["room1"], ["room1"], ["room2"], ["room2"]]


def test_every_terminal_boots_slot_a_release_1(lab):
    for host in lab.terminals:
        release, slot, env = booted(lab, host)
        assert (release, slot) == ("1", "A"), f"{host} runs release {release} from slot {slot}"
        assert env.get("saved_entry") == "A"


def test_hosts_have_distinct_identities(lab):
    ids = lab.ansible("all", "ansible.builtin.command", "cat /etc/machine-id /etc/ssh/ssh_host_ed25519_key.pub")
    assert len({r["stdout"].split()[0] for r in ids.values()}) == len(lab.hosts)     # machine ids
    assert len({r["stdout"].split()[-2] for r in ids.values()}) == len(lab.hosts)    # host keys
    hostnames = lab.ansible("all", "ansible.builtin.command", "hostname")
    assert {h: r["stdout"] for h, r in hostnames.items()} == {h: h for h in lab.hosts}


def test_next_entry_boots_slot_b_once(lab, on_release_1):
    host = on_release_1("t01")
    labmod.flash(lab.state, host, "B", "release-2.img")
    reboot_with(lab, host, "next_entry=B")
    release, slot, env = booted(lab, host)
    assert (release, slot) == ("2", "B")
    assert env.get("next_entry", "") == "" and env["saved_entry"] == "A"     # the one shot is used up
    reboot_with(lab, host)
    assert booted(lab, host)[:2] == ("1", "A")


def test_saved_entry_b_stays_across_reboots(lab, on_release_1):
    host = on_release_1("t02")
    labmod.flash(lab.state, host, "B", "release-2.img")
    reboot_with(lab, host, "saved_entry=B")
    assert booted(lab, host)[:2] == ("2", "B")
    reboot_with(lab, host)
    assert booted(lab, host)[:2] == ("2", "B")


def test_broken_image_in_next_entry_falls_back_to_a(lab, on_release_1):
    host = on_release_1("t03")
    labmod.flash(lab.state, host, "B", "broken.img")
    boots = lab.firmware(host)["boots"]
    reboot_with(lab, host, "next_entry=B")
    release, slot, env = booted(lab, host)
    assert (release, slot) == ("1", "A")
    assert env.get("next_entry", "") == ""
    log = lab.firmware_log(host)
    assert "boot rule chose slot B (one-shot next_entry, now cleared)" in log
    assert "boot of slot B failed" in log
    assert lab.firmware(host)["boots"] == boots + 2        # B, which failed, then A


def test_the_running_slot_is_never_flashed(lab):
    release, slot, _ = booted(lab, "t04")
    with pytest.raises(labmod.LabError, match="the running root file system"):
        labmod.flash(lab.state, "t04", slot, "release-2.img")
    assert booted(lab, "t04")[:2] == (release, slot)


def test_lab_reboot_command_reboots_cleanly(lab):
    boots = lab.firmware("t04")["boots"]
    boot_id = lab.ssh("t04", "cat /proc/sys/kernel/random/boot_id")
    labmod.reboot(lab.state, "t04")
    lab.wait_for("t04 to come back with a new boot id", lambda: lab.firmware("t04")["boots"] == boots + 1
                 and lab.ssh("t04", "cat /proc/sys/kernel/random/boot_id", check=False) not in ("", boot_id))
    assert booted(lab, "t04")[:2] == ("1", "A")


def test_agent_state_partition_survives_a_slot_switch(lab, on_release_1):
    host = on_release_1("t04")
    lab.ssh(host, "echo resume-data > /var/lib/p2pfleet/probe")
    labmod.flash(lab.state, host, "B", "release-2.img")
    reboot_with(lab, host, "next_entry=B")
    assert booted(lab, host)[:2] == ("2", "B")
    assert lab.ssh(host, "cat /var/lib/p2pfleet/probe; rm /var/lib/p2pfleet/probe") == "resume-data\n"
