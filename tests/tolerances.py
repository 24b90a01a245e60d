"""Float32 error bounds from which the tests derive their tolerances.

A tolerance must hold on every x86-64 CPU (AVX2 or AVX-512), with TensorFlow's
oneDNN kernels on or off, and with XLA or without: these change the order and
blocking of every reduction, and the kernels of `exp`, `log` and `tanh`. So
each tolerance is a worst-case bound of floating-point error analysis (Higham,
*Accuracy and Stability of Numerical Algorithms*, 2nd ed., sections 2.2, 3.1
and 4.2), never a number one machine printed:

- Every float32 operation is correctly rounded: ``fl(a op b) = (a op b)(1 + d)``
  with ``|d| <= U32 = 2**-24``.
- A sum of n terms, computed in ANY order or blocking (serial, pairwise, SIMD
  lanes, a tree across devices), is off by at most ``gamma(n - 1) * sum|x_i|``
  with ``gamma(n) = n u / (1 - n u)``. The bound scales with the magnitudes
  that were summed, not with the result: where terms cancel, the result's
  relative error is unbounded, so a relative tolerance means nothing there.
- A dot product (matmul, convolution) of length n, with or without FMA, is off
  by at most ``gamma(n) * sum|a_i b_i|``.
- Two float32 computations of the same quantity in two orders (oneDNN against
  Eigen, XLA against the graph, one device against two) may each be off by the
  bound, so they differ by up to twice it.
- The vectorised `exp`, `log`, `log1p`, `tanh`, `sin` of Eigen, oneDNN and XLA
  are not correctly rounded; their relative error is a few ulps. `FUNC_ULPS`
  allows 8 (2**-21 relative error), which covers the published accuracy of
  each (Eigen and XLA test their float32 `exp`/`log`/`tanh` at <= 2-4 ulp).

The bounds are first-order (terms in u**2 are dropped: with n u < 1e-3 they are
below 0.1% of the bound) and use the float64 reference values in place of the
float32 intermediates, which differ from them by a relative O(n u).
"""

import numpy as np

U32 = 2.0**-24
"""Unit roundoff of float32 (round to nearest): half the distance from 1 to the next float."""
U16 = 2.0**-11
"""Unit roundoff of float16 (10 stored mantissa bits)."""
UBF16 = 2.0**-8
"""Unit roundoff of bfloat16 (7 stored mantissa bits)."""
FUNC_ULPS = 8
"""Ulps of relative error allowed to a vectorised float32 exp/log/tanh/sin."""
U_FUNC = FUNC_ULPS * U32
"""Relative error of one float32 transcendental function evaluation."""


def gamma(n, u=U32):
    """Higham's gamma_n = n u / (1 - n u): the relative error of n roundings."""
    n = np.asarray(n, np.float64)
    if np.any(n * u >= 1):
        raise ValueError(f"`n` is too large for the bound: n*u >= 1. Received: n={n}, u={u}")
    return n * u / (1.0 - n * u)


def float32_sum_bound(terms, axis=None, keepdims=False, u=U32):
    """Error bound of a float32 sum of `terms` along `axis`, in any order.

    ``gamma(n) * sum(|terms|)``, with n the number of terms summed (each input
    term may itself carry a relative rounding error u, hence n rather than
    n - 1). For a mean, divide the bound by n as the mean is.
    """
    terms = np.abs(np.asarray(terms, np.float64))
    n = terms.size if axis is None else np.prod([terms.shape[a] for a in np.atleast_1d(axis)])
    return gamma(n, u) * terms.sum(axis=axis, keepdims=keepdims)


def float32_dot_bound(a, b, u=U32):
    """Error bound of the float32 matrix product ``a @ b``: ``gamma(k) * (|a| @ |b|)``.

    k is the contracted length. Holds for any order, blocking or FMA use (a
    convolution is such a product after im2col).
    """
    a = np.abs(np.asarray(a, np.float64))
    b = np.abs(np.asarray(b, np.float64))
    return gamma(a.shape[-1], u) * (a @ b)


def ulps(x, dtype=np.float32):
    """The spacing of `dtype` at |x|: one unit in the last place of each entry."""
    return np.spacing(np.abs(np.asarray(x, dtype))).astype(np.float64)


def max_ratio(actual, expected, bound):
    """max |actual - expected| / bound: how much of the bound the error uses."""
    error = np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))
    return float(np.max(error / np.asarray(bound, np.float64)))


def assert_within(actual, expected, bound, err_msg=""):
    """Assert ``|actual - expected| <= bound`` entrywise (`bound` broadcasts).

    The message gives the worst entry and its error as a multiple of the bound.
    """
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    bound = np.broadcast_to(np.asarray(bound, np.float64), np.broadcast(actual, expected).shape)
    assert np.all(np.isfinite(actual)), f"{err_msg}: not finite: {actual}"
    error = np.abs(actual - expected)
    ratio = np.where(
        bound > 0, error / np.where(bound > 0, bound, 1.0), np.where(error > 0, np.inf, 0)
    )
    worst = np.unravel_index(np.argmax(ratio), ratio.shape) if ratio.ndim else ()
    assert np.all(error <= bound), (
        f"{err_msg}: |actual - expected| exceeds the float32 bound at {worst}: "
        f"actual={actual[worst]:.9g}, expected={expected[worst]:.9g}, "
        f"error={error[worst]:.3e}, bound={bound[worst]:.3e} "
        f"({ratio[worst]:.2f}x); {int(np.sum(error > bound))} of {error.size} entries exceed it"
    )


def momentum_accumulation(steps, momentum=0.0):
    """How much per-step gradient errors add up in the weights after `steps` steps.

    SGD with momentum b moves the weights by lr * sum_(k<=t) b^(t-k) g_k at step t,
    so an error e in every gradient moves them by at most
    lr * e * sum_(t=1..steps) (1 - b^t) / (1 - b): the value returned, times lr * e.
    First order: it ignores the feedback of earlier weight errors through the curvature,
    a factor (1 + lr |H|)^steps, within 2 for the few steps and small models of the tests.
    """
    b = float(momentum)
    return sum(sum(b**k for k in range(t)) for t in range(1, steps + 1))
