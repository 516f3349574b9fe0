"""Ctrl-C at any moment: ``interrupted`` on stderr, exit status 130, no traceback, nothing left.

Python's default turns SIGINT into a ``KeyboardInterrupt`` wherever the main thread happens to be:
Beam's DoFn runner turns it into a ``RuntimeError`` with a logged traceback, an import or the
interpreter's exit prints its own, and threads and child processes go on. So the commands replace
the default (:func:`exit_on_interrupt`, first thing, before Beam's import) with a handler that ends
the process itself:

1. writes ``interrupted`` to stderr, its last line (stderr goes to /dev/null after it);
2. removes the temporary files being written (:func:`temporary_file`);
3. ends every process this one started, found in ``/proc`` (a runner's job server and SDK
   workers, a template evaluator): SIGTERM, then SIGKILL for any still there after
   :data:`TERM_SECONDS`, and reaps its own children. Threads go on meanwhile: a process one of
   them starts during the clean-up is found at its next look and ended too;
4. leaves with ``os._exit(130)``: no interpreter teardown, where Beam's and the SDKs' threads
   would still run and print.

Outputs appear under their final names only whole (written to a temporary name, then renamed), so
stopping at any point leaves complete files or none. A few short writes must not be cut in the
middle (a dead-letter line appended to a file, the temporary file's creation): they run inside
:func:`deferred`, and a Ctrl-C during one takes effect as it ends.

Only the commands install the handler; imported as a library (tests), nothing changes except that
:func:`deferred` and :func:`temporary_file` keep their books.
"""
import atexit
import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from typing import Dict, Iterator, List, NoReturn, Optional, Tuple

#: Seconds the processes this one started get to end after SIGTERM before SIGKILL.
TERM_SECONDS = 3.0
#: Exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_STATUS = 130

_lock = threading.RLock()  # re-entrant: the handler runs in the main thread, maybe inside deferred
_temporary = set()
_deferring = 0
_pending = False
_installed = False


def exit_on_interrupt() -> None:
    """Makes SIGINT end the process as the module docstring says (call from the main thread)."""
    global _installed
    signal.signal(signal.SIGINT, _on_interrupt)
    _installed = True


def exit_process(status: int) -> NoReturn:
    """Ends a command's process with ``status``.

    With the handler installed: flushes stdout and stderr, runs the ``atexit`` functions (Beam's
    job-server shutdown, logging's flush) while a Ctrl-C still gets ``interrupted``, then
    ``os._exit``. The interpreter's own teardown is skipped because it puts SIGINT back to its
    default action first, and a Ctrl-C during it would kill the process without a word.
    Without the handler (a library caller, a test): ``sys.exit(status)``.
    """
    if not _installed:
        sys.exit(status)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    atexit._run_exitfuncs()  # noqa: SLF001 - what Py_Finalize would run next
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def _on_interrupt(signum, frame):
    global _pending
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the clean-up short
    with _lock:
        if _deferring:
            _pending = True
            return
    _finish()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A short stretch that an interrupt does not cut: the process ends as it finishes."""
    global _deferring
    with _lock:
        _deferring += 1
    try:
        yield
    finally:
        with _lock:
            _deferring -= 1
            finish = _pending and _deferring == 0
        if finish:
            _finish()


@contextlib.contextmanager
def temporary_file(directory: str, prefix: str = ".tmp-",
                   suffix: str = "") -> Iterator[Tuple[int, str]]:
    """``(fd, path)`` of a new temporary file in ``directory``, removed by an interrupt until the
    block ends (the block renames it or removes it)."""
    with deferred():
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
        with _lock:
            _temporary.add(path)
    try:
        yield fd, path
    finally:
        with _lock:
            _temporary.discard(path)


@contextlib.contextmanager
def tracked_temporary(path: str) -> Iterator[str]:
    """Around the writing of a temporary local file ``path`` (not yet created): an interrupt until
    the block ends removes it (the block renames it or removes it)."""
    with _lock:
        _temporary.add(path)
    try:
        yield path
    finally:
        with _lock:
            _temporary.discard(path)


def _finish():
    try:
        os.write(2, b"interrupted\n")
        # The last line: threads that go on while processes end (a step whose job server is
        # gone) would log their errors after it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
    except OSError:
        pass
    with _lock:
        paths = list(_temporary)
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass
    try:
        end_descendants(os.getpid())
    finally:
        os._exit(EXIT_STATUS)


# -- processes -----------------------------------------------------------------------------------

def _parents():
    """``{pid: parent pid}`` of every process visible in ``/proc`` (empty without ``/proc``)."""
    parents = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return parents
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # "pid (name) state ppid ...": the name may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1:
            parents[int(entry)] = int(fields[1])
    return parents


def descendants(pid: int, parents: Optional[Dict[int, int]] = None) -> List[int]:
    """Every process started by ``pid``, its children's too (Linux ``/proc``)."""
    children = {}
    for child, parent in (_parents() if parents is None else parents).items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3] != b"Z"


def _reap(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except OSError:  # not a child of this process, or already reaped
        pass


def end_descendants(pid: int, term_seconds: float = TERM_SECONDS) -> None:
    """Ends every descendant of ``pid`` (SIGTERM, then SIGKILL) and reaps ``pid``'s children."""
    parents = _parents()
    found = descendants(pid, parents)
    if not found:
        return
    children = [p for p in found if parents[p] == pid]
    for target in found:
        _signal(target, signal.SIGTERM)
    deadline = time.monotonic() + term_seconds
    while True:
        # A thread of this process may still be starting one: look again each round.
        parents = _parents()
        for late in descendants(pid, parents):
            if late not in found:
                found.append(late)
                _signal(late, signal.SIGTERM)
                if parents.get(late) == pid:
                    children.append(late)
        for child in children:
            _reap(child)
        alive = [p for p in found if _alive(p)]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    for target in alive:
        _signal(target, signal.SIGKILL)
    deadline = time.monotonic() + term_seconds
    while alive and time.monotonic() < deadline:
        for child in children:
            _reap(child)
        alive = [p for p in alive if _alive(p)]
        if alive:
            time.sleep(0.02)
    # A child that died after its last reap is a zombie, still in the process group until
    # reaped: reap them all now, not after this process has gone.
    for child in children:
        _reap(child)


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except OSError:
        pass
