"""Reading what a run folder holds, trusting none of it.

Every file read back from a run folder (`config.json` aside: `--resume`
compares it with the flags) is checked before it is used, and a bad one
raises `RunFileError` (one line naming the file and what to do), never a
traceback:

- `backup/state.json` (`read_state`) may name only plain files in `backup/`:
  a name with a folder in it, `..`, an absolute path or a link that leads
  out of the run folder is refused (`BackupError`);
- `result.json` and `history.json` (`read_result`, `read_history_json`) must
  be JSON objects with the keys and value types that the reports use;
- `load_results` and `load_histories`, which `report` reads, skip (or raise
  for) the runs whose files are bad;
- a run folder that holds committed work is never trained over: without
  `config.json` (`check_no_work`), or, resumed, without `result.json` and
  without the `backup/` to continue from (`check_nothing_finished`).
"""

import json
import numbers
import os

COMMITTED = (
    "result.json",
    "history.json",
    "best.keras",
    "history.csv",
    "backup/state.json",
)
"""The files of a run folder that hold finished epochs."""
REPORTED = ("dataset", "model", "method", "seed")
"""The keys of `result.json` that `report` groups the runs by."""
PRINTED = ("val_accuracy", "epoch", "epochs_run", "test_accuracy")
"""The keys of `result.json` that `bisam-keras train` prints."""
_RESULT_TYPES = {"dataset": str, "model": str, "method": str}
_RESULT_INTS = ("seed", "epoch", "epochs_run", "steps")


class RunFileError(RuntimeError):
    """A file of a run folder is missing, damaged or points outside the folder.

    The message is one line naming the file and what to do.
    """


class BackupError(RunFileError):
    """A run's backup cannot be read; the message says what to delete."""


def read_json(path):
    """The JSON content of `path`; `RunFileError` naming it if it cannot be read."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise RunFileError(f"{path} cannot be read: {_reason(error)}") from None


def check_result(result, keys=REPORTED):
    """Raises `ValueError` unless `result` is a dict with `keys` and well-typed values."""
    if not isinstance(result, dict):
        raise ValueError(f"it holds a {type(result).__name__}, not a JSON object")
    missing = [key for key in keys if key not in result]
    if missing:
        raise ValueError(f"it lacks {', '.join(repr(k) for k in missing)}")
    for key, value in result.items():
        if key in _RESULT_TYPES and not isinstance(value, _RESULT_TYPES[key]):
            raise ValueError(f"{key!r} is {value!r}, not a string")
        if key in _RESULT_INTS and not _is_int(value):
            raise ValueError(f"{key!r} is {value!r}, not an integer")
        if key.startswith(("val_", "test_")) and not _is_real(value):
            raise ValueError(f"{key!r} is {value!r}, not a number")


def read_result(path, keys=REPORTED):
    """The dict of a `result.json`, with `keys`; `RunFileError` naming the file if not."""
    result = read_json(path)
    try:
        check_result(result, keys)
    except ValueError as error:
        raise RunFileError(f"{path} is not a run's result: {error}") from None
    return result


def read_history_json(path):
    """`{metric: [per-epoch values]}` of a `history.json`; `RunFileError` if not that."""
    history = read_json(path)
    if not isinstance(history, dict) or not all(
        isinstance(values, list) and all(_is_real(v) for v in values) for values in history.values()
    ):
        raise RunFileError(f"{path} is not a run's history: a JSON object of lists of numbers")
    return history


def committed_files(run_dir):
    """The files of `COMMITTED` that `run_dir` holds."""
    return [name for name in COMMITTED if os.path.exists(os.path.join(run_dir, name))]


def check_no_work(run_dir):
    """Raises `RunFileError` if `run_dir`, which has no `config.json`, holds committed work.

    Its settings are unknown, so it can be neither continued nor trained again
    over its files.
    """
    found = committed_files(run_dir)
    if found:
        raise RunFileError(
            f"{run_dir} holds a run's work ({', '.join(found)}) but no config.json, so "
            "its settings are unknown: it is neither resumed nor trained over. Put its "
            "config.json back and rerun with --resume, or move the folder away to train "
            "this run from epoch 1"
        )


def check_nothing_finished(run_dir, epochs_in_history):
    """Raises `RunFileError` if a run without result.json and backup has finished epochs.

    `best.keras` is installed only after a commit, and `history.json` only at
    the end of the run, so either one means finished epochs that would be
    lost by training the run again from epoch 1.
    """
    found = [name for name in ("best.keras", "history.json") if name in committed_files(run_dir)]
    if found:
        raise RunFileError(
            f"cannot --resume the run in {run_dir}: it has finished epochs ({', '.join(found)}, "
            f"{epochs_in_history} epoch(s) in history.csv) but neither result.json nor "
            "backup/state.json to continue from. If it had finished, put its result.json "
            "back; to train it again, move the folder away"
        )


def read_state(run_dir):
    """The committed state of an unfinished run: `{epoch, weights, best_epoch,
    best_value, best_model}` (`epoch` epochs done; file names in `backup/`), or
    `None` if no epoch has been committed.

    Raises:
        BackupError: `backup/state.json` cannot be read, or names a file that
            is not a plain file of `backup/`.
    """
    backup = os.path.join(run_dir, "backup")
    path = os.path.join(backup, "state.json")
    if os.path.exists(path):
        try:
            with open(path) as f:
                state = json.load(f)
            _check_state(state, run_dir)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise BackupError(unreadable(path, error, backup)) from None
        return state
    return None


def wraps_the_model(run_dir, state):
    """Whether the backup weights that `state` names were saved from a
    `SharpnessAwareModel` (an `inner_model` at the top of the file).

    Earlier versions trained the `sgd` method with `--weight-decay-mode at-w`
    as a `SharpnessAwareModel` compiled with `SAM(rho=0)`: such a run resumes
    with the same wrapper. A file that cannot be read answers `False`; loading
    it then raises the error that names it.
    """
    if not state:
        return False
    import h5py  # a dependency of Keras' weights files

    try:
        with h5py.File(os.path.join(run_dir, "backup", state["weights"]), "r") as f:
            return "inner_model" in f
    except (OSError, ValueError):
        return False


def _check_state(state, run_dir):
    """Raises `ValueError` for a `state.json` content that `RunState` did not write."""
    if not isinstance(state, dict):
        raise ValueError(f"it holds a {type(state).__name__}, not a JSON object")
    if not _is_int(state["epoch"]) or state["epoch"] < 1:
        raise ValueError(f"`epoch` must be an integer >= 1, got {state['epoch']!r}")
    backup_file(run_dir, state["weights"], "weights")
    if state.get("best_model") is not None:
        backup_file(run_dir, state["best_model"], "best_model")
    if state.get("best_epoch") is not None and not _is_int(state["best_epoch"]):
        raise ValueError(f"`best_epoch` must be an integer, got {state['best_epoch']!r}")
    if state.get("best_value") is not None and not _is_real(state["best_value"]):
        raise ValueError(f"`best_value` must be a number, got {state['best_value']!r}")


def backup_file(run_dir, name, field):
    """The path of the file `name` of `run_dir/backup/`, which it must not leave.

    Raises:
        ValueError: naming `field` if `name` is not a plain file name (a path,
            `.`, `..`) or is a link that leads elsewhere.
    """
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or os.path.basename(name) != name
        or "/" in name
        or "\\" in name
        or "\0" in name
    ):
        raise ValueError(f"`{field}` must be the name of a file in backup/, got {name!r}")
    path = os.path.join(run_dir, "backup", name)
    inside = os.path.join(os.path.realpath(run_dir), "backup", name)
    if os.path.realpath(path) != inside:
        raise ValueError(f"`{field}` {name!r} leads to {os.path.realpath(path)}, outside {inside}")
    return path


def unreadable(path, error, backup):
    """The message of a `BackupError` for the file `path` of the folder `backup`."""
    return (
        f"cannot read the backup {path} ({_reason(error)}). Delete the folder {backup} and "
        "rerun with --resume to train this run again from epoch 1 (its finished epochs are "
        "lost), or delete the whole run folder to start over."
    )


def _reason(error):
    return " ".join(str(error).split()) or type(error).__name__


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def load_results(output, skipped=None):
    """Every `result.json` below `output`, in folder order.

    Args:
        output: the folder of the runs.
        skipped: `None` to raise `RunFileError` for the first
            result that cannot be read or lacks the keys the report needs
            (`REPORTED`); or a list, to which a one-line message
            naming each such file is appended while the other runs are read.
            Defaults to `None`.
    """
    results = []
    for path in _run_files(output, "result.json"):
        try:
            results.append(read_result(path))
        except RunFileError as error:
            if skipped is None:
                raise
            skipped.append(f"{error} (the run is left out of the report)")
    return results


def load_histories(output, skipped=None):
    """`{(dataset, model, method, seed): history}` for every finished run.

    Args:
        output: the folder of the runs.
        skipped: as in `load_results`; a run whose `result.json` cannot be
            read is left out without a message here. Defaults to `None`.
    """
    histories = {}
    for path in _run_files(output, "history.json"):
        result_path = os.path.join(os.path.dirname(path), "result.json")
        if not os.path.exists(result_path):
            continue
        try:
            r = read_result(result_path)
        except RunFileError:
            if skipped is None:
                raise
            continue
        try:
            histories[(r["dataset"], r["model"], r["method"], r["seed"])] = read_history_json(path)
        except RunFileError as error:
            if skipped is None:
                raise
            skipped.append(f"{error} (the run is left out of the plots)")
    return histories


def _run_files(output, name):
    """The paths of the files called `name` below `output`, in sorted folder order."""
    for root, folders, files in os.walk(output):
        folders.sort()
        if name in files:
            yield os.path.join(root, name)
