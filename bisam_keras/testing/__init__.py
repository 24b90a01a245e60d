"""Code that the tests, the label-noise study and the benchmarks share.

Not part of the training API: `machine` records what a run or a benchmark ran
on (CPU, vector ISA, oneDNN, threads, versions); `AUTHORS_REFERENCE` is the
folder of the authors' PyTorch models (`tests/authors_reference/`, verbatim
copies of LIONS-EPFL/BiSAM), which `authors_module` imports by name.
"""

import importlib.util
import os

AUTHORS_REFERENCE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "tests",
    "authors_reference",
)
"""The folder of the authors' PyTorch code in a checkout of the repository."""


def authors_module(name):
    """The module `name` (`"resnet"`, `"cutout"`, ...) of `AUTHORS_REFERENCE`.

    Loaded from its file, under the name `authors_reference_<name>`, without
    changing `sys.path`; needs PyTorch and a checkout of the repository.

    Raises:
        FileNotFoundError: naming the file, if the checkout has no such module.
    """
    path = os.path.join(AUTHORS_REFERENCE, f"{name}.py")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"the authors' reference module {path} is not there: it lives in a checkout "
            f"of the repository, not in the installed package. Received: name={name!r}"
        )
    spec = importlib.util.spec_from_file_location(f"authors_reference_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
