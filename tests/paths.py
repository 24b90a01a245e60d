"""Where the tests find the shared real data: `../shared` beside the repository.

`BISAM_KERAS_CIFAR10_DIR` overrides the folder. CI runs a clone with `shared/`
beside it, so this resolves there as on a developer's machine.
"""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CIFAR10_DIR = os.environ.get(
    "BISAM_KERAS_CIFAR10_DIR", str(REPO.parent / "shared" / "data" / "cifar10")
)
AUTHORS_REFERENCE = str(REPO / "tests" / "authors_reference")
