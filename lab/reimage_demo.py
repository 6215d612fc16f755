#!/usr/bin/env python3
"""The demo behind ``make demo``: a whole classroom reimaged peer-to-peer on one machine.

1. brings up the virtual lab (docs/lab.md): a server and 8 terminals in 2 rooms, links and
   room uplinks capped, every terminal running release 1 from slot A;
2. runs ``playbooks/reimage.yml`` with the release-2 image, as an administrator would —
   seed → distribute → verify → switch — printing the fleet page's address, the whole lab's
   progress while the image moves, and the summary;
3. proves every terminal now boots release 2, confirmed, by asking each one;
4. takes the lab down (``--keep``, or ``KEEP=1``, leaves it up to look around).

Exit status 0 only when every terminal ended on release 2. Needs root.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from lab import lab as labmod  # noqa: E402
from lab.sh import LabError  # noqa: E402

# The first play of each stage, as reimage.yml imports them.
STAGES = {
    "Put the LAN tracker on the server": "seed",
    "Start a fetch into every terminal's free slot": "distribute",
    "Take every terminal's own verdict": "verify",
    "Switch every verified terminal to its new slot": "switch",
    "Bring failed terminals back for the summary": "summary",
}
# What the demo shows of the run: stage headers, live progress, failures, the summary.
SHOWN = ("PLAY [", "p2pfleet:", "fatal:", "failed:", '"msg"', "        \"", "PLAY RECAP")


def step(text):
    print(f"\n==> {text}", flush=True)


def run_reimage(state, collections, image):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_FORKS="20", ANSIBLE_NOCOLOR="1",
               ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_DEPRECATION_WARNINGS="False")
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", state["inventory"],
           os.path.join(ROOT, "playbooks", "reimage.yml"), "-e", f"p2pfleet_image=/srv/images/{image}",
           "-e", "p2pfleet_progress_every=5"]
    print("$ ansible-playbook -i " + " ".join(cmd[2:]), flush=True)
    times, current, started = {}, None, time.monotonic()
    in_recap = False
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:
            if line.startswith("PLAY ["):
                name = line[6:line.index("]")]
                if name in STAGES:
                    now = time.monotonic()
                    if current:
                        times[current] = now - started
                    current, started = STAGES[name], now
            in_recap = in_recap or line.startswith("PLAY RECAP")
            if in_recap or line.startswith(SHOWN):
                print(line, end="", flush=True)
        rc = proc.wait()
    if current:
        times[current] = time.monotonic() - started
    return rc, times


def prove(state):
    """Ask every terminal what it runs and what boots next: the proof, not the play's word."""
    lines, ok = [], True
    for name, host in sorted(state["hosts"].items()):
        if host["role"] != "terminal":
            continue
        release = labmod.ssh(state, name, "cat /etc/lab-release").stdout.strip()
        env = labmod.ssh(state, name, "grub-editenv /boot/grub/grubenv list").stdout.split()
        saved = next((e.split("=", 1)[1] for e in env if e.startswith("saved_entry=")), "?")
        good = release == "2" and saved == "B"
        ok = ok and good
        lines.append(f"  {name:4}  runs release {release or '?'}  confirmed slot {saved}  {'ok' if good else 'NOT SWITCHED'}")
    print("\n".join(lines))
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terminals", type=int, default=8)
    parser.add_argument("--rooms", type=int, default=2)
    parser.add_argument("--rate", default="100mbit", help="every host link's cap (default 100mbit)")
    parser.add_argument("--uplink", default="400mbit", help="each room's uplink cap (default 400mbit)")
    parser.add_argument("--slot-size", default="1G")
    parser.add_argument("--lab", default="reimagedemo", help="the lab's name (default reimagedemo)")
    parser.add_argument("--keep", action="store_true", default=os.environ.get("KEEP") == "1",
                        help="leave the lab up afterwards (also KEEP=1)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("reimage demo: needs root (network namespaces, loop devices, containers)")
    started = time.monotonic()
    step(f"Bringing up lab {args.lab}: a server and {args.terminals} terminals in {args.rooms} rooms "
         f"(links {args.rate}, uplinks {args.uplink}), every terminal on release 1")
    try:
        state = labmod.up(args.lab, terminals=args.terminals, rooms=args.rooms, rate=args.rate,
                          uplink=args.uplink, slot_size=args.slot_size)
    except LabError as exc:
        sys.exit(f"reimage demo: {exc}")
    up_time = time.monotonic() - started
    ok = False
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.makedirs(os.path.join(tmp, "ansible_collections", "p2pfleet"))
            os.symlink(ROOT, os.path.join(tmp, "ansible_collections", "p2pfleet", "imaging"))
            step("Reimaging the lab with release 2: seed → distribute → verify → switch")
            rc, times = run_reimage(state, tmp, "release-2.img")
        step("Asking every terminal what it runs now")
        ok = prove(state) and rc == 0
        step("Time per stage")
        print(f"  lab up       {up_time:6.1f} s")
        for stage in ("seed", "distribute", "verify", "switch", "summary"):
            if stage in times:
                print(f"  {stage:12} {times[stage]:6.1f} s")
        print(f"  total        {time.monotonic() - started:6.1f} s (reimage {sum(times.values()):.1f} s)")
    finally:
        if args.keep:
            step(f"Lab {args.lab} stays up: inventory {state['inventory']}; "
                 f"take it down with: bin/p2pfleet-lab --lab {args.lab} down")
        else:
            step(f"Taking lab {args.lab} down")
            labmod.down(args.lab)
    print("\nreimage demo: " + ("every terminal boots release 2" if ok else "NOT every terminal switched"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
