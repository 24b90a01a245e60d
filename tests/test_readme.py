"""The usage examples of README.md and docs/outputs.md run, verbatim.

Each page's ```python blocks run in order in one fresh Python process, as a
reader pasting them into one session would, in an empty folder (the
experiments example writes `runs/`). Nothing is added or replaced: a failing
example is a failing test. A fresh process, not this one: the test session
holds two logical CPU devices and the collective state of earlier
`MirroredStrategy` tests, which a reader's session does not.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(page):
    return PYTHON_BLOCK.findall((ROOT / page).read_text())


@pytest.mark.slow
@pytest.mark.parametrize("page", ["README.md", "docs/outputs.md"])
def test_page_examples_run_verbatim(page, tmp_path):
    blocks = python_blocks(page)
    assert len(blocks) >= 3, f"{page} lost its examples"
    script = tmp_path / "examples.py"
    parts = [f"# {page}, python block {n}\n{block}" for n, block in enumerate(blocks, 1)]
    script.write_text("\n".join(parts))
    run = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-5000:]
