"""Code that the tests, the label-noise study and the benchmarks share.

Not part of the training API: `machine` records what a run or a benchmark ran
on (CPU, vector ISA, oneDNN, threads, versions); `AUTHORS_REFERENCE` is the
folder of the authors' PyTorch models (`tests/authors_reference/`, verbatim
copies of LIONS-EPFL/BiSAM), which `authors_module` imports by name;
`torch_reference` and `torch_train` are the PyTorch side of the parity check
(they need PyTorch); `benchmark_script` imports a script of `benchmarks/` for
the tests. The last three need a checkout of the repository, and none of them
changes `sys.path`.
"""

import importlib.util
import os

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
"""The checkout of the repository that holds this package (when installed from one)."""
AUTHORS_REFERENCE = os.path.join(REPOSITORY, "tests", "authors_reference")
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
    return _load(path, f"authors_reference_{name}")


def benchmark_script(name):
    """The script `benchmarks/<name>.py` of the checkout, imported as a module
    (`benchmark_<name>`), for the tests of its command line."""
    return _load(os.path.join(REPOSITORY, "benchmarks", f"{name}.py"), f"benchmark_{name}")


def _load(path, module_name):
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
