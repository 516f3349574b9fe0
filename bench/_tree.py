"""What a run's whole process tree uses, sampled from Linux ``/proc``: CPU time and resident memory
of the process and all its descendants, by role, and how many Beam SDK worker processes ran.

A run on a portable runner does its work outside the launching process: embedded Flink in the job
server's JVM (a ``java`` child Beam starts and stops at exit), the Python work in SDK worker
processes that Beam's worker pool starts (``pipelines.runners.WorkerPool``, a child of its own
session). The launcher's own resource usage sees none of it (the JVM is stopped after the run
returns; the pool is killed, so its workers are never waited for), so :class:`TreeSampler` reads
every descendant's ``/proc/PID/stat`` in a thread every ``every`` seconds. CPU of a process that
ends between two samples is counted up to its last sample; memory is the largest sum of the
tree's resident sets at one sample (a lower bound of the true peak).
"""
import os
import threading

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
#: Roles, by what a process's command line holds (the first that matches).
SDK_WORKER, WORKER_POOL, JOB_SERVER, LAUNCHER, OTHER = (
    "sdk_workers", "worker_pool", "job_server", "launcher", "other")


def role(args):
    """The role of a process from its argv: Beam's worker pool starts each SDK worker as
    ``python -c '...SdkHarness(...).run()'`` (``worker_pool_main``, use_process), and Beam's
    Flink runner starts its job server as ``java ... -jar``."""
    text = " ".join(args)
    if "SdkHarness" in text or "sdk_worker_main" in text:
        return SDK_WORKER
    if "pipelines.runners" in text or "worker_pool_main" in text:
        return WORKER_POOL
    if args and os.path.basename(args[0]) == "java":
        return JOB_SERVER
    return OTHER


def _stat(pid):
    """``(parent pid, CPU seconds, resident bytes)`` of ``pid``, or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is the state (the 3rd field of stat): ppid 4th, utime 14th, stime 15th, rss 24th.
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS, int(fields[21]) * _PAGE


def tree_stats(root):
    """``{pid: (CPU seconds, resident bytes)}`` of ``root`` and all its descendants, from one
    pass over ``/proc``."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                stats[int(entry)] = stat
    children = {}
    for pid, (parent, _, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in tree:
            tree[pid] = stats[pid][1:]
            todo.extend(children.get(pid, ()))
    return tree


def classify(roles, pid, root):
    """Sets ``roles[pid]``. Read again at every sample: a child between its fork and its exec
    still shows its parent's command line; an ended one (a zombie) shows none and keeps its role."""
    if pid == root:
        roles[pid] = LAUNCHER
        return
    args = cmdline(pid)
    if args or pid not in roles:
        roles[pid] = role(args)


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return [part.decode("utf-8", "replace") for part in fh.read().split(b"\0") if part]
    except OSError:
        return []


class TreeSampler:
    """Samples ``pid`` (default: this process) and its descendants until :meth:`stop`."""

    def __init__(self, pid=None, every=0.2):
        self.pid = pid or os.getpid()
        self.every = every
        self.cpu = {}      # pid: CPU seconds at its last sample
        self.roles = {}    # pid: role
        self.peak_rss = 0  # bytes: the largest sum over the tree at one sample
        self.sdk_workers_at_once = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tree-sampler")

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        self.sample()  # the state at the end, e.g. the launcher's own CPU
        return self

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def sample(self):
        rss, workers = 0, 0
        for pid, (cpu, resident) in tree_stats(self.pid).items():
            classify(self.roles, pid, self.pid)
            self.cpu[pid] = cpu
            rss += resident
            workers += self.roles[pid] == SDK_WORKER
        self.peak_rss = max(self.peak_rss, rss)
        self.sdk_workers_at_once = max(self.sdk_workers_at_once, workers)

    def summary(self):
        """The figures ``bench._measure`` prints: tree totals, CPU by role, each SDK worker's CPU
        (largest first: one worker doing most of the work shows a stage that did not spread)."""
        by_role = {}
        for pid, cpu in self.cpu.items():
            by_role[self.roles[pid]] = by_role.get(self.roles[pid], 0.0) + cpu
        workers = sorted((cpu for pid, cpu in self.cpu.items() if self.roles[pid] == SDK_WORKER),
                         reverse=True)
        return {"tree_cpu_seconds": round(sum(self.cpu.values()), 3),
                "tree_peak_rss_mb": round(self.peak_rss / (1024 * 1024), 1),
                "tree_cpu_by_role": {name: round(cpu, 3) for name, cpu in sorted(by_role.items())},
                "sdk_worker_cpu_seconds": [round(cpu, 3) for cpu in workers],
                "sdk_workers_started": len(workers),
                "sdk_workers_at_once": self.sdk_workers_at_once}
