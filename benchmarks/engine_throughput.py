#!/usr/bin/env python3
"""Engine benchmark: measured side by side in one run, printed as a table with ratios.

* hashing (manifest: per-piece SHA-1 + whole-image digest in one pass) vs a plain read
  of the same image;
* seed start-up without re-hashing (seed mode + trusted layout) vs the full check
  libtorrent would otherwise run, from an image file and from a partition;
* transfer throughput over 127.0.0.1: file → partition and partition → partition.

Needs root (loop devices). Usage: benchmarks/engine_throughput.py [--size 2G] [--keep]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # helpers.collection: the checkout as the collection
from helpers.collection import importable  # noqa: E402

importable()

import libtorrent as lt  # noqa: E402
from bench_files import losetup, make_image  # noqa: E402

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import image, metainfo, verify  # noqa: E402
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.session import Session, SessionSettings  # noqa: E402

P2PFLEET = [sys.executable, os.path.join(ROOT, "bin", "p2pfleet"), "--json"]
MIB = 1 << 20


def drop_caches():
    """Cold-cache reads when the kernel lets us; otherwise every read is equally warm."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def plain_read(path, size):
    for _ in image.read_blocks(path, size):
        pass


def libtorrent_hashing(path, size, piece_size):
    """libtorrent's own threaded piece hashing (SHA-1 only, no whole-image digest)."""
    fs = lt.file_storage()
    fs.add_file(os.path.basename(path), size)
    ct = lt.create_torrent(fs, piece_size, lt.create_torrent.v1_only)
    lt.set_piece_hashes(ct, os.path.dirname(path))
    return ct


def seed_startup(manifest, image, trusted):
    """Seconds from adding the seed job until libtorrent will serve every piece.

    The untrusted baseline is what libtorrent does without our layout: an image file is
    hash-checked piece by piece; a partition (size 0 to libtorrent) in seed mode has its
    resume data rejected and is re-checked in full.
    """
    if trusted:
        with Session(SessionSettings("127.0.0.1:0")) as session:
            start = time.perf_counter()
            snap, _ = session.put_seed(manifest, image)
            session.wait_for(lambda jobs: jobs[snap.id].state in ("seeding", "failed"), 600, "seed start")
            if session.job(snap.id).state != "seeding":
                raise RuntimeError(session.job(snap.id).error)
            return time.perf_counter() - start
    params = lt.session_params({"listen_interfaces": "127.0.0.1:0", "enable_dht": False, "enable_lsd": False})
    params.disk_io_constructor = "posix_disk_io_constructor"  # the only backend that reads a device
    plain = lt.session(params)
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(manifest.torrent_path)
    atp.save_path = os.path.dirname(os.path.abspath(image))
    atp.renamed_files = {0: os.path.abspath(image)}
    if manifest.source.get("fingerprint", {}).get("kind") == "device":
        atp.flags |= lt.torrent_flags.seed_mode
    start = time.perf_counter()
    handle = plain.add_torrent(atp)
    while True:
        plain.wait_for_alert(10)
        plain.pop_alerts()
        st = handle.status()
        if st.state == lt.torrent_status.seeding:
            return time.perf_counter() - start
        if st.state == lt.torrent_status.downloading:
            raise RuntimeError(f"libtorrent found only {st.num_pieces} pieces of {image}")
        if time.perf_counter() - start > 600:
            raise RuntimeError("seed did not start within 600 s")


def transfer(manifest, source, target, workdir):
    seed_port, fetch_port = 47311, 47312
    seeder = subprocess.Popen(P2PFLEET + ["seed", manifest, source, "--listen", f"127.0.0.1:{seed_port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in seeder.stderr:
            if "ready after" in line:
                break
        state = tempfile.mkdtemp(dir=workdir)
        proc = subprocess.run(P2PFLEET + ["fetch", manifest, target, "--peer", f"127.0.0.1:{seed_port}",
                                          "--listen", f"127.0.0.1:{fetch_port}", "--state-dir", state,
                                          "--no-local"],  # the wire and the disk, not delta transfer
                              capture_output=True, text=True, check=True)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        return result["seconds"]
    finally:
        seeder.terminate()
        seeder.wait(30)


def verify_only(manifest, target):
    return timed(lambda: verify.verify_target(manifest, target))[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2G")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    size = metainfo.parse_size(args.size)
    if os.geteuid() != 0:
        sys.exit("benchmark needs root for loop devices")
    work = tempfile.mkdtemp(prefix="p2pfleet-bench-", dir="/var/tmp")
    loops = []
    rows = []
    try:
        image = os.path.join(work, "image.img")
        make_image(image, size)
        for name in ("source", "target1", "target2"):
            backing = os.path.join(work, name + ".bin")
            if name == "source":
                shutil.copyfile(image, backing)
            else:
                with open(backing, "wb") as f:
                    f.truncate(size)
            loops.append(losetup(backing))
        source_dev, target1, target2 = loops
        out = os.path.join(work, "manifests")
        os.mkdir(out)
        cold = drop_caches()
        t_read, _ = timed(lambda: plain_read(image, size))
        drop_caches()
        t_hash, (manifest, _) = timed(lambda: metainfo.create_manifest(image, out, name="image"))
        drop_caches()
        t_lt_hash, _ = timed(lambda: libtorrent_hashing(image, size, manifest.piece_size))
        rows.append(("plain read of the image", t_read, size))
        rows.append(("manifest hashing (SHA-1 pieces + digest)", t_hash, size))
        rows.append(("libtorrent set_piece_hashes (SHA-1 pieces only)", t_lt_hash, size))
        drop_caches()
        t_dev_read, _ = timed(lambda: plain_read(source_dev, size))
        drop_caches()
        t_dev_manifest, (dev_manifest, _) = timed(lambda: metainfo.create_manifest(source_dev, out, name="dev"))
        rows.append(("plain read of the partition", t_dev_read, size))
        rows.append(("manifest hashing from the partition", t_dev_manifest, size))

        startup = {}
        for label, m, src in (("file", manifest, image), ("partition", dev_manifest, source_dev)):
            drop_caches()
            startup[label, True] = seed_startup(m, src, trusted=True)
            drop_caches()
            startup[label, False] = seed_startup(m, src, trusted=False)

        drop_caches()
        t_fp = transfer(manifest.path, image, target1, work)
        rows.append(("fetch file → partition (incl. verify)", t_fp, size))
        drop_caches()
        t_pp = transfer(dev_manifest.path, source_dev, target2, work)
        rows.append(("fetch partition → partition (incl. verify)", t_pp, size))
        drop_caches()
        t_verify = verify_only(manifest, target1)
        rows.append(("verify a partition (digest only)", t_verify, size))

        print(f"\nimage {size / MIB:.0f} MiB, pieces {manifest.piece_size // 1024} KiB, "
              f"digest {manifest.digest_algorithm}, caches {'dropped' if cold else 'warm (drop_caches refused)'} "
              f"before each step, libtorrent {lt.__version__}, {os.cpu_count()} cores\n")
        print(f"{'step':48} {'seconds':>9} {'MiB/s':>9}")
        for label, seconds, nbytes in rows:
            print(f"{label:48} {seconds:9.2f} {nbytes / MIB / seconds:9.1f}")
        print(f"\n{'seed start-up':48} {'no check':>9} {'full check':>11} {'ratio':>7}")
        for label in ("file", "partition"):
            fast, slow = startup[label, True], startup[label, False]
            print(f"{'from an image ' + label:48} {fast:9.3f} {slow:11.2f} {slow / max(fast, 1e-6):7.0f}x")
        print(f"\nhashing speed / plain read speed: file {t_read / t_hash:.2f}, partition {t_dev_read / t_dev_manifest:.2f}")
        print(f"fetch time / verify time (file → partition): {t_fp / t_verify:.2f}")
    finally:
        for dev in loops:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
