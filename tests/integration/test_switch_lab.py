"""The boot switch through the collection's own modules on a lab terminal that really
reboots: boot_slot next → ansible.builtin.reboot → slot_info sees the new slot → confirm;
and a broken image tried once: the terminal comes back on its confirmed slot by itself."""
import json
import os
import subprocess
import sys
import tempfile

import pytest

from lab import lab as labmod
from helpers.modules import collections_path

TERMINAL = "t03"
BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    return collections_path(tmp_path_factory.mktemp("collections"))


def play(lab, collections, tasks):
    """Run tasks on the terminal; the slot_info result registered as ``slots`` is returned."""
    tasks = tasks + [{"p2pfleet.imaging.slot_info": {"slots": "{{ p2pfleet_slots }}", "boot": "{{ p2pfleet_boot }}"},
                      "register": "slots"},
                     {"ansible.builtin.copy": {"content": "{{ slots | to_json }}", "dest": "{{ out }}"},
                      "delegate_to": "localhost"}]
    with tempfile.TemporaryDirectory() as tmp:
        playbook, out = os.path.join(tmp, "play.yml"), os.path.join(tmp, "slots.json")
        with open(playbook, "w") as f:
            json.dump([{"hosts": TERMINAL, "gather_facts": False, "vars": {"out": out}, "tasks": tasks}], f)
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_NOCOLOR="1",
                   ANSIBLE_RETRY_FILES_ENABLED="0")
        proc = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", lab.inventory, playbook],
                              capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        with open(out) as f:
            return json.load(f)


def boot_slot(slot, state):
    return {"p2pfleet.imaging.boot_slot": {"slot": slot, "slots": "{{ p2pfleet_slots }}", "state": state,
                                           "backend": "grub"}}


REBOOT = {"ansible.builtin.reboot": {"reboot_timeout": 300}}


def test_a_broken_slot_falls_back_and_a_good_one_is_switched_to_and_kept(lab, collections):
    # A broken image in B, tried once: the terminal comes back on A, its confirmed slot, by
    # itself, and is still manageable.
    labmod.flash(lab.state, TERMINAL, "B", "broken.img")
    tries_of_b = lab.firmware_log(TERMINAL).count("boot rule chose slot B")
    slots = play(lab, collections, [boot_slot("B", "next"), REBOOT])
    assert slots["booted"]["name"] == "A" and slots["boot_env"]["saved_entry"] == "A", slots
    assert not slots["boot_env"].get("next_entry"), "the one-shot try of B was not used up"
    assert lab.firmware_log(TERMINAL).count("boot rule chose slot B") == tries_of_b + 1, "B was not tried"

    # Release 2 in B: tried once, it runs; confirmed, it stays.
    labmod.flash(lab.state, TERMINAL, "B", "release-2.img")
    slots = play(lab, collections, [boot_slot("B", "next"), REBOOT])
    assert slots["booted"]["name"] == "B" and slots["boot_env"]["saved_entry"] == "A", slots
    assert lab.ssh(TERMINAL, "cat /etc/lab-release").strip().endswith("2")
    slots = play(lab, collections, [boot_slot("B", "confirmed"), REBOOT])
    assert slots["booted"]["name"] == "B" and slots["next_boot"] == "B", slots

    # Leave the terminal as the session lab started: release 1 confirmed on A.
    slots = play(lab, collections, [boot_slot("A", "next"), REBOOT, boot_slot("A", "confirmed")])
    assert slots["booted"]["name"] == "A" and slots["next_boot"] == "A", slots
