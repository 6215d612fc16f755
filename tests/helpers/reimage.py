"""What the reimage tests ask of a lab: run a staged playbook with a release, and read what a
terminal runs, its boot environment and its agent's reimage record."""
import json
import os

from . import ROOT
from .playbook import run_playbook

PLAYBOOKS = os.path.join(ROOT, "playbooks")


def play(lab, collections, playbook, image, *extra, popen=False):
    return run_playbook(lab.inventory, collections, os.path.join(PLAYBOOKS, playbook),
                        "-e", f"p2pfleet_image=/srv/images/{image}", "-e", "p2pfleet_progress_every=2", *extra,
                        popen=popen)


def release_of(lab, terminal):
    return lab.ssh(terminal, "cat /etc/lab-release").strip()


def grubenv(lab, terminal):
    return dict(line.split("=", 1) for line in lab.ssh(terminal, "grub-editenv /boot/grub/grubenv list").split())


def record(lab, terminal):
    """The terminal's reimage as its agent keeps it (engine/reimage.py)."""
    return json.loads(lab.ssh(terminal, "cat /var/lib/p2pfleet/reimage.json"))
