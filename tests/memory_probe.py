"""A preamble for child processes that measure what one call allocates: ``peak_kb()``
(the peak RSS since the last call: Linux's VmHWM, reset through ``clear_refs``, so that
the import phase's own peak does not hide what a load allocates) and ``rss_kb()``."""

PEAK_PROBE = r"""
def peak_kb():
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return hwm

def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
"""
