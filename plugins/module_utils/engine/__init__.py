"""The p2pfleet P2P engine: one data path shared by modules, the agent and the tracker.

Trace an image from the seeder's partition to a terminal's inactive slot:

* ``image``, ``identity`` — what an image or target *is* (regular file or raw block device),
  every refusal that protects a terminal, and the identity a job checks at every restart.
* ``metainfo`` — one hashing pass over the image: piece-size policy, torrent and *manifest*.
* ``session``  — one host's LAN libtorrent session and its loop; ``jobs`` — the seed and
  fetch jobs it runs, their records and snapshots; ``delta`` — the pieces a host already
  holds, taken from its own disks; ``stripes`` — which pieces a fetch asks the origin for first.
* ``verify``   — the whole-image digest and the per-piece check of a target.
* ``slots``, ``boot``, ``reimage``, ``layout`` — A/B slots, the boot environment that picks
  one, a terminal's reimage from release to confirmed slot, and the disk layout.
* ``agent/`` and ``tracker/`` — the two daemons (``daemon``, ``runtime``: what they share);
  ``cli`` — the same engine on the command line.
* ``errors``, ``files``, ``net``, ``bencode``, ``version`` — the small pieces under them all.

Nothing here imports ``ansible``: the same files run inside AnsiballZ, inside the daemons
and under plain pytest.
"""
