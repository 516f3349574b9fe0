"""Worker processes that parse blocks of input files (``core.blocks``) next to a local pipeline.

On the DirectRunner every DoFn runs in one Python process, so parsing (a quarter of a run) would
use one core while the others idle. :class:`ParseWorkers` hands the blocks of a file to worker
processes and gives the results back in file order, so what the read stage emits is the same as
parsing in-process.

A worker is ``python -m transforms._parse_workers``: it imports ``core.blocks`` only (no Beam, so
it starts in a fraction of a second), reads length-prefixed pickled requests on stdin and writes
replies on stdout, and ends when its stdin closes, which also happens when the pipeline's process
dies. A worker's failure is raised in the pipeline with the worker's traceback; a worker that
exits is an error naming its exit code. Workers are started at the first file that has more than
one block, one per thread of a small thread pool (a thread sends a block and waits for its reply
with the GIL released, so one request per worker is in flight and the pipes cannot deadlock).
"""
import collections
import gc
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor

_LOGGER = logging.getLogger(__name__)
_HEADER = struct.Struct("<Q")
#: Where ``core`` and ``transforms`` are importable from, for workers started from any directory.
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_started = 0  # worker processes started by this process, for the benchmark's memory figure


def workers_started():
    return _started


class ParseWorkerError(RuntimeError):
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


class ParseWorkers:
    """``processes`` worker processes parsing blocks; :meth:`parse_blocks` yields in input order.

    Up to two blocks per worker are in flight (one parsing, one waiting), so a worker never waits
    for the pipeline to take a reply before it has its next block.
    """

    def __init__(self, processes):
        if processes < 1:
            raise ValueError("processes must be at least 1, got %r" % processes)
        self._processes = processes
        self._threads = ThreadPoolExecutor(processes, thread_name_prefix="parse-worker")
        self._local = threading.local()
        self._children = []
        self._lock = threading.Lock()

    def parse_blocks(self, blocks, path, time_range=None):
        """``core.blocks.ParsedBlock`` of each ``(first line number, bytes)`` block, in order."""
        in_flight = collections.deque()
        for first_lineno, data in blocks:
            in_flight.append(self._threads.submit(self._parse, (data, first_lineno, path, time_range)))
            if len(in_flight) >= 2 * self._processes:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()

    def close(self):
        """Ends the workers (their stdin closes) and waits for them."""
        self._threads.shutdown(wait=True)
        with self._lock:
            children, self._children = self._children, []
        for child in children:
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
        global _started
        child = getattr(self._local, "child", None)
        if child is None:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT_ROOT, env.get("PYTHONPATH")) if p)
            child = subprocess.Popen([sys.executable, "-m", "transforms._parse_workers"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
            with self._lock:
                self._children.append(child)
                _started += 1
            self._local.child = child
            _LOGGER.info("started parse worker %s", child.pid)
        return child

    def _parse(self, request):
        child = self._child()
        try:
            _send(child.stdin, pickle.dumps(request, protocol=5))
            reply = _receive(child.stdout)
        except (BrokenPipeError, OSError):
            reply = None
        if reply is None:
            raise ParseWorkerError("a parse worker (pid %s) exited with code %s"
                                   % (child.pid, child.wait()))
        status, payload = pickle.loads(reply)
        if status != "ok":
            raise ParseWorkerError("a parse worker failed on %s at line %d:\n%s"
                                   % (request[2], request[1], payload))
        return payload


def _serve(stdin, stdout):
    from core.blocks import parse_block
    while True:
        request = _receive(stdin)
        if request is None:
            return 0
        data, first_lineno, path, time_range = pickle.loads(request)
        try:
            reply = ("ok", parse_block(data, first_lineno, path, time_range))
        except Exception:
            reply = ("error", traceback.format_exc())
        del data, request
        _send(stdout, pickle.dumps(reply, protocol=5))


def main():
    # Ctrl-C reaches the whole process group: the pipeline's process handles it, and its exit
    # closes this worker's stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # replies are framed on stdout: nothing else may write there
    # A block's parse allocates many small containers and frees none of them in cycles.
    gc.set_threshold(50_000, 20, 20)
    return _serve(stdin, stdout)


if __name__ == "__main__":
    sys.exit(main())
