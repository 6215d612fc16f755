#!/usr/bin/env python3
"""How much of a new release a terminal would fetch: release B against release A, offline.

Hashes both images with the manifest's piece size (the default policy, or --piece-size)
and prints the share of B's pieces that are zeros, equal to A's piece at the same index
(kept, where A is in the target slot), found anywhere in A (copied, where A is the running
slot), and what is left for the network. Nothing is written; the images can be files or
partitions. Used for the numbers in docs/delta.md.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # helpers.collection: the checkout as the collection
from helpers.collection import importable  # noqa: E402

importable()

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.image import probe  # noqa: E402
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.metainfo import (  # noqa: E402
    choose_piece_size, hash_pieces, parse_size, zero_piece_hash,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="release A: what the terminal holds")
    parser.add_argument("new", help="release B: what it is to fetch")
    parser.add_argument("--piece-size", default=None, help="default: the manifest policy's for B's size")
    args = parser.parse_args()
    old_size, new_size = probe(args.old).size, probe(args.new).size
    piece = choose_piece_size(new_size, parse_size(args.piece_size) if args.piece_size else None)
    old, new = hash_pieces(args.old, old_size, piece), hash_pieces(args.new, new_size, piece)
    count = len(new)
    zero = {i for i, h in enumerate(new) if h == zero_piece_hash(min(piece, new_size - i * piece))}
    same = {i for i, h in enumerate(new) if i not in zero and i < len(old) and old[i] == h}
    old_set = set(old)
    anywhere = {i for i, h in enumerate(new) if i not in zero and h in old_set}
    print(f"{args.new}: {count} pieces of {piece // 1024} KiB against {args.old}")
    print(f"  zero pieces:                   {len(zero) / count:6.1%}")
    print(f"  same piece at the same index:  {len(same) / count:6.1%}  (kept, when A is in the target slot)")
    print(f"  found anywhere in A:           {len(anywhere) / count:6.1%}  (copied, when A is the running slot)")
    print(f"  left to fetch, A in the target slot:  {(count - len(zero) - len(same)) / count:6.1%}")
    print(f"  left to fetch, A is the running slot: {(count - len(zero) - len(anywhere)) / count:6.1%}")


if __name__ == "__main__":
    main()
