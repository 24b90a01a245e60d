"""One process at a time per run folder: an exclusive `flock` on `<run>/.lock`.

`hold(run_dir)` takes the lock before anything of the run is read or written
and keeps it until the run returns or fails, so a second `bisam-keras train`
of the same run (a resubmitted job, two shells) stops at once with
`RunLockedError`, naming the process that holds the lock (its PID and host,
which the holder writes into the file). The kernel releases a `flock` when its
process ends, however it ends (`kill -9` too), so a lock never outlives its
run. The lock file is removed when the run lets go of it, and so are the
folders that `hold` created and that stayed empty (a run that failed before
writing anything leaves nothing behind).
"""

import contextlib
import json
import os
import socket

try:
    import fcntl
except ImportError:  # Windows: no flock; msvcrt's byte-range lock serves the same end
    fcntl = None
    import msvcrt

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another process holds the run folder's lock; the message names it."""


@contextlib.contextmanager
def hold(run_dir):
    """Holds the exclusive lock of `run_dir` for the `with` block.

    Args:
        run_dir: the run folder; created if missing (and removed again at the
            end if it is still empty).

    Raises:
        RunLockedError: another process holds the lock; nothing was changed.
    """
    path = os.path.join(run_dir, LOCK_NAME)
    created = _missing_folders(run_dir)
    try:
        fd = _acquire(path, run_dir)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)  # before the unlock: a process that opened it retries (_acquire)
        os.close(fd)
        _remove_empty(created)


def _missing_folders(path):
    """The folders from `path` up to its first existing ancestor, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _remove_empty(folders):
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


def _acquire(path, run_dir):
    """Opens and locks `path`, the lock file that is at `path` once locked."""
    while True:
        os.makedirs(run_dir, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # another process removed an empty run folder meanwhile
            continue
        try:
            _lock(fd)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"another process ({holder}) is running this run already: it holds {path}. "
                "Wait for it to end or stop it, then rerun this command (with --resume to "
                "continue its work)"
            ) from None
        if _is_at(fd, path):
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
            return fd
        os.close(fd)  # the holder removed this file as it let go: lock the new one


def _lock(fd):
    """An exclusive, non-blocking lock on `fd`; `BlockingIOError` if another process has it."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as error:
        raise BlockingIOError(str(error)) from None


def _is_at(fd, path):
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _holder(fd):
    """`'PID 123 on host h'` from the lock file, or `'PID unknown'` before it is written."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 4096))
        return f"PID {int(holder['pid'])} on host {holder['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "PID unknown"
