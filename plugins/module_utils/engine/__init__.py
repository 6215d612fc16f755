"""The p2pfleet P2P engine: one data path shared by modules, the agent and the tracker.

Trace an image from the seeder's partition to a terminal's inactive slot:

* ``image``    — what an image or target *is* (regular file or raw block device), its size,
                 and every refusal that protects a terminal before a byte is written.
* ``identity`` — what makes a target the device a job checked: read once, held, compared at
                 every restart.
* ``metainfo`` — one hashing pass over the image: the piece-size policy, the torrent
                 (v1, private, optional virtual-file split) and the *manifest* beside it.
* ``swarm``    — the LAN libtorrent session, the seed job and the fetch job (straight into
                 the target, with resume data kept outside it) and their progress snapshots.
* ``verify``   — the whole-image digest and the per-piece check of a target.
* ``bencode``  — the wire format shared by metainfo and the tracker.

Nothing here imports ``ansible``: the same files run inside AnsiballZ, inside the daemons
and under plain pytest.
"""
