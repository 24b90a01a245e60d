"""How `bisam-keras` runs as a process: TensorFlow imported quietly, SIGTERM
ended as Ctrl-C is, and the exit status of each kind of error."""

import os
import re
import signal
import sys
import tempfile
import threading

# TensorFlow's start-up lines (absl's notice, oneDNN, CUDA probing, CPU
# features), printed while it is imported whatever TF_CPP_MIN_LOG_LEVEL says.
_STARTUP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IW]\d{4} \d\d:\d\d:\d\d"
    r"|To enable the following instructions:)"
)


def import_tensorflow(verbose):
    """Imports TensorFlow with its start-up lines hidden unless `verbose` is 3.

    `TF_CPP_MIN_LOG_LEVEL=3` (unless set by the user) hides the C++ log lines
    after start-up, `E0000 ... failed call to cuInit` on a CPU-only machine
    among them; the lines printed during the import itself, before absl's
    logging is set up, are filtered from file descriptor 2.
    """
    if "tensorflow" in sys.modules:
        return
    if verbose == 3 or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        import tensorflow  # noqa: F401

        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                import tensorflow  # noqa: F401
            finally:
                os.dup2(saved, 2)
                capture.seek(0)
                lines = capture.read().decode(errors="replace").splitlines()
                kept = [line for line in lines if not _STARTUP_NOISE.match(line)]
                if kept:
                    sys.stderr.write("\n".join(kept) + "\n")
                    sys.stderr.flush()
    finally:
        os.close(saved)


def one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


TERMINATED = []


def terminate(signum, frame):
    """SIGTERM (a batch scheduler's stop, `kill`) ends a run as Ctrl-C does."""
    TERMINATED.append(signum)
    raise KeyboardInterrupt


def handle_sigterm():
    """Installs `terminate` for SIGTERM; returns the handler to restore (or `None`)."""
    TERMINATED.clear()
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, terminate)


def exit_code(error):
    """1 for data, run files or a disk that cannot be used and for a diverged
    run, 2 for bad settings and a run that another process holds, None otherwise."""
    data = sys.modules.get("bisam_keras.data")
    faults = sys.modules.get("bisam_keras.experiments.faults")
    lock = sys.modules.get("bisam_keras.experiments.lock")
    run_files = sys.modules.get("bisam_keras.experiments.run_files")
    unusable = [
        getattr(data, "DataError", None),
        getattr(data, "DatasetUnavailableError", None),
        getattr(run_files, "RunFileError", None),
        getattr(faults, "RunWriteError", None),
        getattr(faults, "TrainingDiverged", None),
    ]
    if isinstance(error, tuple(kind for kind in unusable if kind is not None)):
        return 1
    if isinstance(error, ValueError) or (lock and isinstance(error, lock.RunLockedError)):
        return 2
    return None
