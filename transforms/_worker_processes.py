"""Worker processes that run pure-core tasks next to a local pipeline (``--worker_processes``).

On the DirectRunner every DoFn runs in one Python process, so the pipeline uses one core while the
others idle. Three steps hand their pure work to worker processes and take the results back in
order, so what they emit is the same as computing in-process:

* ``parse_block`` (``core.blocks``): the read stage's blocks of input lines;
* ``message_line_runs`` (``core.messages``): a local Event Hub sink's lines, from users' changes,
  as one sorted run per batch of users;
* ``evaluate_histories`` (``core.history``): the engine over users' whole histories, in the replay
  and at the stream's one wake-up per user in batch execution.

A worker is ``python -m transforms._worker_processes``: it imports only the ``core`` module of a
task (no Beam, so it starts in a fraction of a second), reads length-prefixed pickled requests on
stdin, writes replies on stdout (each with the CPU time the task took: :func:`worker_task_cpu`),
and ends when its stdin closes, which also happens when the pipeline's process dies. A task's
failure is raised in the pipeline with the worker's traceback; a worker that exits is an error
naming its exit code. The DoFns of one process share one set of workers (:func:`acquire_workers`),
started when first needed, one per thread of a small thread pool: a thread sends a request and
waits for its reply with the GIL released, so one request per worker is in flight and the pipes
cannot deadlock.
"""
import collections
import gc
import importlib
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

from core.interrupt import spawning

_LOGGER = logging.getLogger(__name__)
_HEADER = struct.Struct("<Q")
#: Where ``core`` and ``transforms`` are importable from, for workers started from any directory.
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


#: Task name: (module, function). Only these run in a worker; their modules import no Beam.
TASKS = {
    "parse_block": ("core.blocks", "parse_block"),
    "message_line_runs": ("core.messages", "message_line_runs"),
    "evaluate_histories": ("core.history", "evaluate_histories"),
}
#: Runner names (lower case, without "runner") that run the whole pipeline in this process.
DIRECT_RUNNERS = ("", "direct", "switchingdirect", "fnapi")


def runner_name(runner):
    name = (runner if isinstance(runner, str) else type(runner).__name__ if runner else "")
    return name.lower().rsplit(".", 1)[-1].replace("runner", "")


def resolve_worker_processes(value, runner):
    """``--worker_processes``: ``auto`` is one per CPU on in-process runners, 0 elsewhere."""
    if value != "auto":
        return int(value)
    in_process = runner_name(runner) in DIRECT_RUNNERS + ("bundlebaseddirect",)
    return (os.cpu_count() or 1) if in_process else 0


_peaks_kb = []  # each closed worker's peak resident memory, for the benchmark's memory figure
_task_cpu = {}  # task name: [replies, CPU seconds the workers spent on them], for the benchmark
_task_cpu_lock = threading.Lock()


def worker_peaks_kb():
    """The peak resident memory (KB) of each worker this process has closed, where the system
    tells it (Linux ``VmHWM``). A worker's own ``ru_maxrss`` would not do: it starts from the
    pipeline process's size at the fork."""
    return list(_peaks_kb)


def worker_task_cpu():
    """``{task: (replies, CPU seconds)}``: what the workers of this process spent on each task,
    as they measured it (user and system time from reading a request to the task's return).

    The benchmark's breakdown of a run's CPU time: unlike the workers' total (the children's
    resource usage), it tells parsing from evaluation from building messages.
    """
    with _task_cpu_lock:
        return {task: tuple(entry) for task, entry in _task_cpu.items()}


def _count_task_cpu(task, seconds):
    with _task_cpu_lock:
        entry = _task_cpu.setdefault(task, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds


def _peak_kb(pid):
    try:
        with open("/proc/%d/status" % pid, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class WorkerProcessError(RuntimeError):
    pass


def _send(stream, payload):
    stream.write(_HEADER.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _receive(stream):
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return payload


class WorkerProcesses:
    """``processes`` worker processes running :data:`TASKS`; results come back in request order.

    :meth:`map_ordered` keeps up to two requests per worker in flight (one running, one waiting),
    so a worker never waits for the pipeline to take a reply before it has its next request.
    """

    def __init__(self, processes):
        if processes < 1:
            raise ValueError("processes must be at least 1, got %r" % processes)
        self.processes = processes
        self._threads = ThreadPoolExecutor(processes, thread_name_prefix="worker-process")
        self._local = threading.local()
        self._children = []
        self._lock = threading.Lock()

    def submit(self, task, *args):
        """A future of ``task(*args)`` computed in a worker."""
        if task not in TASKS:
            raise ValueError("unknown task %r" % task)
        return self._threads.submit(self._call, task, args)

    def map_ordered(self, task, arguments):
        """``task(*args)`` for each ``args`` of the iterable, computed in workers, in order."""
        in_flight = collections.deque()
        for args in arguments:
            in_flight.append(self.submit(task, *args))
            if len(in_flight) >= 2 * self.processes:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()

    def close(self):
        """Ends the workers (their stdin closes) and waits for them."""
        self._threads.shutdown(wait=True)
        with self._lock:
            children, self._children = self._children, []
        for child in children:
            peak = _peak_kb(child.pid) if child.poll() is None else None
            if peak is not None:
                _peaks_kb.append(peak)
            try:
                child.stdin.close()
            except OSError:
                pass
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            child.stdout.close()

    def _child(self):
        child = getattr(self._local, "child", None)
        if child is None:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT_ROOT, env.get("PYTHONPATH")) if p)
            with spawning():  # a Ctrl-C's clean-up sees every worker (core/interrupt.py)
                child = subprocess.Popen([sys.executable, "-m", "transforms._worker_processes"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
            with self._lock:
                self._children.append(child)
            self._local.child = child
            _LOGGER.info("started worker process %s", child.pid)
        return child

    def _call(self, task, args):
        child = self._child()
        try:
            _send(child.stdin, pickle.dumps((task, args), protocol=5))
            reply = _receive(child.stdout)
        except (BrokenPipeError, OSError):
            reply = None
        if reply is None:
            raise WorkerProcessError("a worker process (pid %s) exited with code %s"
                                     % (child.pid, child.wait()))
        status, payload, cpu_seconds = pickle.loads(reply)
        _count_task_cpu(task, cpu_seconds)
        if status != "ok":
            raise WorkerProcessError("a worker process failed in %s:\n%s" % (task, payload))
        return payload


class OrderedBatches:
    """Items of one task sent to the workers in batches of ``size``, replies taken in order.

    A DoFn makes one per bundle: :meth:`add` an item with what it keeps of it (its ``place``:
    timestamp, window, key...) and yield what comes back; :meth:`finish` in ``finish_bundle``.
    Both give ``(reply, places)`` per batch: the task's reply for ``task(*args, items)`` and the
    places of its items, in the order they were added. At most two batches per worker are in
    flight: a batch is waited for only when a third would be.
    """

    def __init__(self, workers, task, size, *args):
        self._workers, self._task, self._size, self._args = workers, task, size, args
        self._items, self._places, self._in_flight = [], [], collections.deque()

    def add(self, item, place):
        self._items.append(item)
        self._places.append(place)
        if len(self._items) >= self._size:
            yield from self._send()

    def finish(self):
        if self._items:
            yield from self._send()
        while self._in_flight:
            future, places = self._in_flight.popleft()
            yield future.result(), places

    def _send(self):
        future = self._workers.submit(self._task, *self._args, self._items)
        self._in_flight.append((future, self._places))
        self._items, self._places = [], []
        while len(self._in_flight) > 2 * self._workers.processes:
            future, places = self._in_flight.popleft()
            yield future.result(), places


_shared = {}  # processes: [WorkerProcesses, users]
_shared_lock = threading.Lock()


def acquire_workers(processes):
    """The process's shared :class:`WorkerProcesses` of that size (from a DoFn's ``setup``)."""
    with _shared_lock:
        entry = _shared.get(processes)
        if entry is None:
            entry = _shared[processes] = [WorkerProcesses(processes), 0]
        entry[1] += 1
        return entry[0]


def release_workers(workers):
    """Gives back what :func:`acquire_workers` gave (from ``teardown``); the last user closes it."""
    with _shared_lock:
        entry = _shared.get(workers.processes)
        if entry is None or entry[0] is not workers:
            workers.close()
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _shared[workers.processes]
    workers.close()


def _serve(stdin, stdout):
    functions = {}
    while True:
        request = _receive(stdin)
        if request is None:
            return 0
        started = time.process_time()
        # No automatic collection while a task runs. A task's objects live until it returns (a
        # block's parsed events wait in their groups to be packed) and form no cycles, so each
        # collection during it only traverses them again: a cost per event that grew with the
        # block, and blocks grow with the file (the parse of 600k events took 14-17% more CPU with
        # it). Collection resumes between tasks and finds whatever cycle a task did leave.
        gc.disable()
        try:
            task, args = pickle.loads(request)
            del request
            function = functions.get(task)
            if function is None:
                module, name = TASKS[task]
                function = functions[task] = getattr(importlib.import_module(module), name)
            reply = ("ok", function(*args))
        except Exception:
            reply = ("error", traceback.format_exc())
        finally:
            gc.enable()
        args = None
        _send(stdout, pickle.dumps(reply + (time.process_time() - started,), protocol=5))


def main():
    # Ctrl-C reaches the whole process group: the pipeline's process handles it, and its exit
    # closes this worker's stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # replies are framed on stdout: nothing else may write there
    status = _serve(stdin, stdout)
    stdout.flush()
    sys.stderr.flush()
    # The pipeline waits for this exit when it closes its workers: end without the interpreter's
    # teardown, which frees what the tasks left one object at a time.
    os._exit(status)


if __name__ == "__main__":
    main()  # ends the process itself
