"""This machine's CPU use between two moments, for benchmarks that must show when the
machine, not what they measure, set the pace."""


def cpu_ticks():
    """``(busy, total)`` jiffies of all cores so far (``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def cpu_percent(before, after):
    """Percent of all cores busy between two ``cpu_ticks()``."""
    busy, total = after[0] - before[0], after[1] - before[1]
    return 100.0 * busy / total if total else 0.0
