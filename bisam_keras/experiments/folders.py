"""Checks of the output folder that need no TensorFlow: a run must not build
its data and model for minutes and then fail to write its first file."""

import os
import tempfile


def check_output(path):
    """Raises `ValueError` (one line) if `path` cannot be or become a writable folder.

    The folder is not created: its nearest existing ancestor must be a folder
    in which a file can be created, and nothing on the way may be a file. The
    check creates and removes a temporary folder there, so it also sees
    read-only file systems and permissions that `os.access` misjudges (root).
    """
    path = os.path.abspath(os.fspath(path))
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        where = "is a file" if probe == path else f"is under a file, {probe}"
        raise ValueError(
            f"`output` must be a folder, but {path} {where}. Received: output={path!r}"
        )
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".bisam-keras-check-", dir=probe))
    except OSError as error:
        raise ValueError(
            f"`output` cannot be written: creating a folder in {probe} fails "
            f"({error.strerror or error}). Received: output={path!r}"
        ) from None
    return path
