"""The usage examples of README.md and docs/outputs.md run, verbatim.

Each page's ```python blocks run in order in one namespace, as a reader
pasting them into one session would, in a fresh folder (the experiments
example writes `runs/`). Nothing is added or replaced: a failing example is a
failing test.
"""

import re
from pathlib import Path

import keras
import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(page):
    return PYTHON_BLOCK.findall((ROOT / page).read_text())


@pytest.mark.slow
@pytest.mark.parametrize("page", ["README.md", "docs/outputs.md"])
def test_page_examples_run_verbatim(page, tmp_path, monkeypatch):
    blocks = python_blocks(page)
    assert len(blocks) >= 3, f"{page} lost its examples"
    monkeypatch.chdir(tmp_path)
    keras.backend.clear_session()
    namespace = {"__name__": "__main__"}
    for number, block in enumerate(blocks, 1):
        code = compile(block, f"{page}, python block {number}", "exec")
        exec(code, namespace)  # noqa: S102 - running the documentation is the test
