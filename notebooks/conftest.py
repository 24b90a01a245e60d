"""Run the notebooks in their small configuration under pytest (nbmake).

Each notebook reads `BISAM_KERAS_NOTEBOOK_SCALE`: unset (or `full`) it does the
full-size work whose outputs are committed; `smoke` shrinks data, epochs and
models so that CI executes every cell top to bottom in seconds. nbmake starts
the kernels from this process, so they inherit the variable.
"""

import os

os.environ.setdefault("BISAM_KERAS_NOTEBOOK_SCALE", "smoke")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
