"""Gradients and Hessian-vector products, from the backend's own autodiff.

Everything else in `bisam_keras.sharpness` is written with `keras.ops`; only
differentiation and compilation differ between backends. Each backend has one
small module (`autodiff_<backend>.py`, as Keras has one trainer per backend)
with four functions, the last two over a scalar function `fn(params, *args)`
of a list of tensors `params`:

```
spec(shape, dtype)                      # an input-signature entry; None in shape: any size
compile_function(fn, signature, name)   # compiled once for `signature`, never retraced
value_and_gradient(fn)(params, *args)             -> (value, aux, d value / d params)
hessian_vector_product(fn)(params, vectors, *args) -> H(params) @ vectors
```

`fn` returns `(value, aux)` for `value_and_gradient` and `value` for
`hessian_vector_product`. The module is chosen once per measure, from
`keras.backend.backend()`. TensorFlow is implemented; JAX and PyTorch raise
`NotImplementedError` until their modules are added.
"""

import collections
import importlib

import keras

IMPLEMENTED = ("tensorflow",)
"""The backends that have an autodiff module."""

TRACES = collections.Counter()
"""How many times each compiled function was traced, by name (a test counts retraces)."""


def backend_module(backend=None):
    """The autodiff module of `backend` (`keras.backend.backend()` when `None`)."""
    backend = keras.backend.backend() if backend is None else backend
    if backend not in IMPLEMENTED:
        raise NotImplementedError(
            f"bisam_keras.sharpness has no autodiff module for the {backend!r} backend yet "
            f"(implemented: {list(IMPLEMENTED)}). Received: backend={backend!r}"
        )
    return importlib.import_module(f"bisam_keras.sharpness.autodiff_{backend}")


def count_trace(name):
    """Called by a backend module each time it traces the function `name`."""
    TRACES[name] += 1
