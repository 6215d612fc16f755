#!/usr/bin/env python3
"""The demo behind ``make demo``: one machine plays a server and a terminal.

1. makes a random partition image and two loop-device partitions: the server's source
   partition (holding the image) and the terminal's inactive slot (empty);
2. ``p2pfleet manifest`` hashes the source partition into a torrent and manifest;
3. ``p2pfleet seed`` seeds it from the partition, without re-checking it;
4. ``p2pfleet fetch`` downloads it straight into the terminal's slot over 127.0.0.1,
   showing progress, then verifies it;
5. compares both partitions byte for byte and cleans everything up.

Needs root (loop devices). ``--size`` sets the image size (default 256M).
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
P2PFLEET = [sys.executable, os.path.join(ROOT, "bin", "p2pfleet")]


def step(text):
    print(f"\n==> {text}", flush=True)


def run(*args, **kw):
    print("$ p2pfleet " + " ".join(args), flush=True)
    return subprocess.run(P2PFLEET + list(args), check=True, **kw)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256M", help="image size (e.g. 256M, 1G)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the demo needs root: it makes loop-device partitions")
    sys.path.insert(0, os.path.join(ROOT, "tests"))  # helpers.collection: the checkout as the collection
    from helpers.collection import importable
    importable()
    from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.metainfo import parse_size
    size = parse_size(args.size)

    work = tempfile.mkdtemp(prefix="p2pfleet-demo-", dir="/var/tmp")
    loops, seeder = [], None
    try:
        step(f"making a {size >> 20} MiB random image and two loop-device partitions")
        source_file, slot_file = os.path.join(work, "server-part.bin"), os.path.join(work, "terminal-slot-b.bin")
        with open(source_file, "wb") as f:
            for _ in range(0, size, 16 << 20):
                f.write(os.urandom(min(16 << 20, size - f.tell())))
        with open(slot_file, "wb") as f:
            f.truncate(size + (16 << 20))  # a slot is usually a little larger than the image
        for backing in (source_file, slot_file):
            loops.append(subprocess.run(["losetup", "--find", "--show", backing], check=True,
                                        capture_output=True, text=True).stdout.strip())
        source, slot = loops
        print(f"server partition {source}, terminal inactive slot {slot}")

        step("hashing the server partition into a manifest")
        out = os.path.join(work, "manifests")
        os.mkdir(out)
        run("manifest", source, "--out", out, "--name", "lab-image")
        manifest = os.path.join(out, "lab-image.manifest.json")

        step("seeding from the server partition (no re-check)")
        seed_port, fetch_port = free_port(), free_port()
        print(f"$ p2pfleet seed {manifest} {source} --listen 127.0.0.1:{seed_port}", flush=True)
        seeder = subprocess.Popen(P2PFLEET + ["seed", manifest, source, "--listen", f"127.0.0.1:{seed_port}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        for line in seeder.stderr:
            if "ready after" in line:
                print(line.strip())
                break
            if time.monotonic() > deadline:
                raise SystemExit("seeder did not start")

        step("fetching into the terminal's inactive slot")
        started = time.monotonic()
        run("fetch", manifest, slot, "--device", "--peer", f"127.0.0.1:{seed_port}", "--listen",
            f"127.0.0.1:{fetch_port}",
            "--state-dir", os.path.join(work, "state"), "--progress-interval", "1")
        seconds = time.monotonic() - started

        step("comparing the two partitions byte for byte")
        subprocess.run(["cmp", "-n", str(size), source, slot], check=True)
        print(f"identical: {size >> 20} MiB moved partition → partition in {seconds:.1f} s "
              f"({size / (1 << 20) / seconds:.0f} MiB/s including verification)")
    finally:
        if seeder:
            seeder.terminate()
            seeder.wait(30)
        for dev in loops:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def free_port() -> int:
    """A port nobody listens on now: a demo must not collide with another one running."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
