"""This machine's CPU use between two moments, for benchmarks that must show when the
machine, not what they measure, set the pace."""


def cpu_ticks():
    """``(busy, total)`` jiffies of all cores so far (``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def process_ticks(pids):
    """``(busy, total)`` like ``cpu_ticks``, busy being what the processes ``pids`` (and their
    children they waited for) used: with ``cpu_percent``, their share of all cores, so that a
    run shows how much of the machine its own processes took and how much the rest did."""
    busy = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:                  # gone meanwhile
            continue
        busy += sum(int(x) for x in fields[11:15])    # utime stime cutime cstime
    return busy, cpu_ticks()[1]


def cpu_percent(before, after):
    """Percent of all cores busy between two ``cpu_ticks()`` (or two ``process_ticks()``)."""
    busy, total = after[0] - before[0], after[1] - before[1]
    return 100.0 * busy / total if total else 0.0


def memory_available():
    """Bytes the kernel says can be had without swapping (``MemAvailable``)."""
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
