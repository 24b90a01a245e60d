"""An independent float64 NumPy reference of one sharpness-aware training step.

The model is a two-layer MLP, ``logits = tanh(x W1 + b1) W2 + b2`` (tanh, not
relu, so that the loss is smooth and finite differences are meaningful), with
parameters ``[W1, b1, W2, b2]``. Forward and backward passes are derived by
hand; nothing here imports TensorFlow, Keras or ``bisam_keras``.

Step semantics (see the package docs): ascent objective ``A`` at ``w`` (the
compiled loss without regularization for SAM, the lower bound ``Q`` for
BiSAM), ``e = rho * g / ||g||`` (or ASAM's ``rho * T^2 g / ||T g||`` with
``T = |w| + eta``), descent gradient of the compiled loss plus regularization
at ``w + e``, applied by SGD at ``w``.
"""

import math

import numpy as np

GAMMA = math.log(math.e - 1.0)


# --------------------------------------------------------------------------- #
# The MLP.
# --------------------------------------------------------------------------- #


def forward(params, x):
    """Returns ``(logits, cache)``."""
    w1, b1, w2, b2 = (np.asarray(p, np.float64) for p in params)
    x = np.asarray(x, np.float64)
    h = np.tanh(x @ w1 + b1)
    return h @ w2 + b2, (x, h)


def backward(params, cache, dlogits):
    """Gradients ``[dW1, db1, dW2, db2]`` of a scalar whose d/dlogits is ``dlogits``."""
    _, _, w2, _ = (np.asarray(p, np.float64) for p in params)
    x, h = cache
    dw2 = h.T @ dlogits
    db2 = dlogits.sum(axis=0)
    dz = (dlogits @ w2.T) * (1.0 - h * h)
    dw1 = x.T @ dz
    db1 = dz.sum(axis=0)
    return [dw1, db1, dw2, db2]


# --------------------------------------------------------------------------- #
# Per-example objectives and their gradients with respect to the logits.
# --------------------------------------------------------------------------- #


def _logsumexp(a):
    m = a.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=-1, keepdims=True)))[..., 0]


def _softmax(a):
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _one_hot(y, k):
    out = np.zeros((len(y), k))
    out[np.arange(len(y)), np.asarray(y, int)] = 1.0
    return out


def cross_entropy(f, y):
    """Per-example ``l_i = logsumexp(f_i) - f_{i, y_i}`` and ``dl_i / df_i``."""
    values = _logsumexp(f) - f[np.arange(len(y)), np.asarray(y, int)]
    return values, _softmax(f) - _one_hot(y, f.shape[1])


def phi(x, kind, alpha):
    if kind == "neglog":
        return 1.0 - np.logaddexp(0.0, GAMMA - x)
    return np.tanh(alpha * x)


def phi_prime(x, kind, alpha):
    if kind == "neglog":
        return 1.0 / (1.0 + np.exp(x - GAMMA))  # sigmoid(gamma - x)
    return alpha * (1.0 - np.tanh(alpha * x) ** 2)


def lower_bound(f, y, kind, mu, alpha=0.1):
    """Per-example ``Q_i`` and ``dQ_i / df_i``.

    ``F_j = f_j - f_y``, ``Q_i = log(sum_j exp(mu phi(F_j))) / mu - log(K) / mu``;
    with ``p = softmax(mu phi(F))``:
    ``dQ_i / df_k = p_k phi'(F_k) - delta_{k, y} sum_j p_j phi'(F_j)``.
    """
    y = np.asarray(y, int)
    b, k = f.shape
    margins = f - f[np.arange(b), y][:, None]
    ph = phi(margins, kind, alpha)
    values = (_logsumexp(mu * ph) - math.log(k)) / mu
    p = _softmax(mu * ph)
    pd = p * phi_prime(margins, kind, alpha)
    grad = pd - _one_hot(y, k) * pd.sum(axis=1, keepdims=True)
    return values, grad


def per_example(objective, f, y):
    """``(values, d values / d f)`` for ``objective`` = ``("ce",)`` or
    ``("neglog"|"tanh", mu, alpha)``."""
    if objective[0] == "ce":
        return cross_entropy(f, y)
    kind, mu, alpha = objective
    return lower_bound(f, y, kind, mu, alpha)


# --------------------------------------------------------------------------- #
# Batch losses (Keras "sum_over_batch_size": sum_i s_i l_i / b).
# --------------------------------------------------------------------------- #


def _weights(sample_weight, b):
    return np.ones(b) if sample_weight is None else np.asarray(sample_weight, np.float64)


def mean_objective(params, x, y, sample_weight, objective):
    """``(sum_i s_i A_i / b, [grads])`` without regularization."""
    f, cache = forward(params, x)
    b = f.shape[0]
    s = _weights(sample_weight, b)
    values, dvalues = per_example(objective, f, y)
    return float((s * values).sum() / b), backward(params, cache, dvalues * s[:, None] / b)


def regularization(params, l2):
    """``sum_p l2[p] * sum(w_p^2)`` and its gradients; ``l2`` is a list per parameter."""
    value = 0.0
    grads = []
    for p, c in zip(params, l2):
        p = np.asarray(p, np.float64)
        value += c * float((p * p).sum())
        grads.append(2.0 * c * p)
    return value, grads


def total_loss(params, x, y, sample_weight, l2):
    """The compiled cross-entropy plus regularization, and its gradients."""
    value, grads = mean_objective(params, x, y, sample_weight, ("ce",))
    reg, reg_grads = regularization(params, l2)
    return value + reg, [g + r for g, r in zip(grads, reg_grads)]


# --------------------------------------------------------------------------- #
# The perturbation and the step.
# --------------------------------------------------------------------------- #


def global_norm(tensors):
    return math.sqrt(sum(float((t * t).sum()) for t in tensors))


def perturbation(grads, params, rho, adaptive=False, eta=0.0):
    if adaptive:
        scales = [np.abs(np.asarray(p, np.float64)) + eta for p in params]
        norm = global_norm([t * g for t, g in zip(scales, grads)])
        factor = 0.0 if norm == 0.0 else rho / norm
        return [factor * t * t * g for t, g in zip(scales, grads)]
    norm = global_norm(grads)
    factor = 0.0 if norm == 0.0 else rho / norm
    return [factor * g for g in grads]


def sharpness_aware_gradient(params, x, y, sample_weight, cfg):
    """Descent gradient of one (micro-)batch.

    ``cfg`` keys: ``objective`` (see ``per_example``), ``rho``, ``adaptive``,
    ``eta``, ``l2`` (list per parameter), ``sds_fraction``; ``ascent_l2`` and
    ``descent_at_w`` give wrong variants, to check that the tests tell them apart.
    Returns ``(grads, loss_at_w, loss_at_w_plus_e, info)``.
    """
    params = [np.asarray(p, np.float64) for p in params]
    l2 = cfg["l2"]
    loss, plain_grads = total_loss(params, x, y, sample_weight, l2)
    if cfg["rho"] == 0.0:
        return plain_grads, loss, loss, {"eps": [np.zeros_like(p) for p in params]}
    _, ascent = mean_objective(params, x, y, sample_weight, cfg["objective"])
    if cfg.get("ascent_l2") is not None:
        # Only for showing that the tests tell the variants apart.
        ascent = [a + r for a, r in zip(ascent, regularization(params, cfg["ascent_l2"])[1])]
    eps = perturbation(ascent, params, cfg["rho"], cfg["adaptive"], cfg["eta"])
    perturbed = [p + e for p, e in zip(params, eps)]
    info = {"eps": eps, "ascent": ascent}
    if cfg.get("sds_fraction", 1.0) < 1.0:
        b = len(y)
        f0, _ = forward(params, x)
        f1, _ = forward(perturbed, x)
        a0, _ = per_example(cfg["objective"], f0, y)
        a1, _ = per_example(cfg["objective"], f1, y)
        sharpness = a1 - a0
        k = max(1, math.ceil(round(cfg["sds_fraction"] * b, 6)))
        order = np.argsort(-sharpness)
        keep = np.sort(order[:k])
        info.update(sharpness=sharpness, keep=keep, k=k)
        x = np.asarray(x)[keep]
        y = np.asarray(y)[keep]
        sample_weight = None if sample_weight is None else np.asarray(sample_weight)[keep]
    perturbed_loss, grads = total_loss(perturbed, x, y, sample_weight, l2)
    if cfg.get("descent_at_w"):
        # Wrong variant: regularization gradient taken at w instead of w + e.
        grads = [
            g - r + r0
            for g, r, r0 in zip(
                grads, regularization(perturbed, l2)[1], regularization(params, l2)[1]
            )
        ]
    return grads, loss, perturbed_loss, info


def step_gradient(params, x, y, sample_weight, cfg):
    """The descent gradient of a batch, with mSAM's micro-batches if configured."""
    m = cfg.get("micro_batch_size")
    if m is None:
        grads, loss, perturbed_loss, _ = sharpness_aware_gradient(params, x, y, sample_weight, cfg)
        return grads, loss, perturbed_loss
    b = len(y)
    assert b % m == 0
    count = b // m
    total, losses, perturbed_losses = None, [], []
    for k in range(count):
        sl = slice(k * m, (k + 1) * m)
        sw = None if sample_weight is None else np.asarray(sample_weight)[sl]
        grads, loss, perturbed_loss, _ = sharpness_aware_gradient(
            params, np.asarray(x)[sl], np.asarray(y)[sl], sw, cfg
        )
        total = grads if total is None else [a + g for a, g in zip(total, grads)]
        losses.append(loss)
        perturbed_losses.append(perturbed_loss)
    return [g / count for g in total], float(np.mean(losses)), float(np.mean(perturbed_losses))


class SGD:
    """Keras SGD: ``w -= lr g``; with momentum ``v = m v - lr g; w += v``."""

    def __init__(self, learning_rate, momentum=0.0):
        self.lr = learning_rate
        self.momentum = momentum
        self.velocity = None

    def apply(self, params, grads):
        params = [np.asarray(p, np.float64) for p in params]
        if self.momentum == 0.0:
            return [p - self.lr * g for p, g in zip(params, grads)]
        if self.velocity is None:
            self.velocity = [np.zeros_like(p) for p in params]
        self.velocity = [self.momentum * v - self.lr * g for v, g in zip(self.velocity, grads)]
        return [p + v for p, v in zip(params, self.velocity)]


def train_step(params, x, y, sample_weight, cfg, optimizer):
    """One step: ``(new_params, loss, perturbed_loss)``."""
    grads, loss, perturbed_loss = step_gradient(params, x, y, sample_weight, cfg)
    return optimizer.apply(params, grads), loss, perturbed_loss
