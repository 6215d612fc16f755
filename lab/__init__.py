"""The virtual lab: a whole classroom (server, rooms of terminals, A/B slot disks) on one machine.

See docs/lab.md. Entry points: ``python -m lab`` and ``bin/p2pfleet-lab``.
"""
