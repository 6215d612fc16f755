"""``lab`` command line: up, status, ssh, reboot, power, flash, image, down (docs/lab.md)."""
import argparse
import os
import signal
import sys

from . import lab
from .sh import LabError


def parser():
    p = argparse.ArgumentParser(prog="lab", description="A whole classroom of bootable terminals on this machine.")
    p.add_argument("--lab", default=os.environ.get("P2PFLEET_LAB", "default"),
                   help="lab name, so several labs coexist (default: $P2PFLEET_LAB or 'default')")
    sub = p.add_subparsers(dest="command", required=True)
    u = sub.add_parser("up", help="build the lab and boot every host")
    u.add_argument("--terminals", type=int, default=4, help="number of terminals (default 4)")
    u.add_argument("--rooms", type=int, default=1, help="rooms the terminals are split into (default 1)")
    u.add_argument("--rate", default=None, help="cap of every host link, both ways, e.g. 100mbit (default: none)")
    u.add_argument("--uplink", default=None, help="cap of each room's uplink, both ways (default: none)")
    u.add_argument("--slot-size", default="1G", help="size of slots A and B (default 1G)")
    u.add_argument("--light", action="store_true",
                   help="hosts as bare network namespaces (same network, caps and disks; no root file system, "
                        "systemd, sshd or inventory): for the fleet benchmark's large labs")
    sub.add_parser("status", help="hosts, addresses, power state, booted slot")
    s = sub.add_parser("ssh", help="SSH into a host (or run a command there)")
    s.add_argument("host")
    s.add_argument("cmd", nargs=argparse.REMAINDER)
    r = sub.add_parser("reboot", help="reboot a host cleanly (ctrl-alt-del), or power it on")
    r.add_argument("host")
    w = sub.add_parser(
        "power", help="cut a host's power (off), power it on (on), or show its power state (status)",
        description="off: a hard power cut, as a real terminal sees one: the host's firmware, its "
                    "systemd-nspawn and every process in its network namespace get SIGKILL (no clean "
                    "shutdown, no SIGTERM to any service) and the host stays off; its disk and network "
                    "namespace stay. The host kernel's page cache survives, so no write is torn. "
                    "on: boots it as a power-on does (the firmware applies the boot rule, as at a cold "
                    "boot) and waits until it has booted. Off an off host, or on an on host, does nothing.")
    w.add_argument("action", choices=("off", "on", "status"))
    w.add_argument("hosts", nargs="+", metavar="HOST")
    w.add_argument("--no-wait", action="store_true", help="on: return once the firmware started, not booted")
    f = sub.add_parser("flash", help="write an image into a terminal's inactive slot from outside")
    f.add_argument("host")
    f.add_argument("slot", help="A or B")
    f.add_argument("image", help="image name on the server (release-2.img) or a path")
    i = sub.add_parser("image", help="build a release image into the lab's image directory")
    i.add_argument("release", help="release marker written to /etc/lab-release")
    i.add_argument("--broken", action="store_true", help="an image that cannot boot (init fails)")
    sub.add_parser("down", help="take the lab down, leaving nothing behind")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    # A terminated `lab up` must still tear down what it built: let SIGTERM unwind like ^C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return dispatch(args)
    except LabError as error:
        print(f"lab: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def dispatch(args):
    if args.command == "up":
        state = lab.up(args.lab, args.terminals, args.rooms, args.rate, args.uplink, args.slot_size,
                       light=args.light)
        if state["light"]:
            print(f"light lab: hosts are network namespaces {state['prefix']}-HOST (ip netns exec), no inventory")
        else:
            print(f"inventory: {state['inventory']}")
        return 0
    if args.command == "down":
        lab.down(args.lab)
        print(f"lab {args.lab} is down")
        return 0
    state = lab.load(args.lab)
    if args.command == "status":
        print(f"lab {state['name']}: prefix {state['prefix']}, network {state['network']}, " +
              ("light (bare network namespaces), no inventory" if state.get("light")
               else f"inventory {state['inventory']}"))
        rows = [("HOST", "ROLE", "ROOM", "ADDRESS", "POWER", "SLOT", "BOOTS")] + lab.status(state)
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    elif args.command == "ssh":
        command = lab.ssh_command(state, args.host, *args.cmd)
        os.execvp(command[0], command)
    elif args.command == "reboot":
        lab.reboot(state, args.host)
    elif args.command == "power":
        power(state, args.action, args.hosts, wait=not args.no_wait)
    elif args.command == "flash":
        lab.flash(state, args.host, args.slot, args.image)
        print(f"{args.image} written into slot {args.slot} of {args.host}")
    elif args.command == "image":
        print(lab.build_image(state, args.release, args.broken))
    return 0


def power(state, action, names, wait=True):
    """``power off|on|status HOST...``: one line per host, every name checked before any is touched."""
    for name in names:
        lab.check_host(state, name)
    lab.refuse_light(state, "no firmware to power a host off or on")
    if action == "status":
        for name in names:
            fw = lab.firmware_status(state, name)
            if lab.is_powered(state, name):
                print(f"{name}: on ({fw.get('state', 'starting')}, slot {fw.get('slot') or '-'}, "
                      f"{fw.get('boots', 0)} boot(s) since power-on)")
            else:
                print(f"{name}: off" + (" (halted: its boots failed)" if fw.get("state") == "halted" else ""))
    elif action == "off":
        for name in names:
            print(f"{name}: power cut" if lab.power_off(state, name) else f"{name}: already off, nothing done")
    else:
        started = [name for name in names if lab.power_on(state, name)]
        for name in names:
            if name not in started:
                print(f"{name}: already on, nothing done")
        if wait and started:
            lab.wait_booted(state, started, lab.BOOT_TIMEOUT)
        for name in started:
            slot = lab.firmware_status(state, name).get("slot")
            print(f"{name}: powered on" + (f", booted slot {slot}" if wait and slot else ""))
