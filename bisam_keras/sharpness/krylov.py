"""Top eigenvalues of a symmetric operator from its products: power iteration and Lanczos.

Pure NumPy in float64 on the host: `matvec(v) -> H v` is the only access to
`H` (a Hessian-vector product over the measured examples). The Krylov
bookkeeping is a few vectors of the model's size, and float64 keeps the
reorthogonalization exact enough that no spurious copies of an eigenvalue
appear.

```
power iteration (deflated, one eigenvalue at a time, `iterations` products each):
    w = H v - sum_j lambda_j v_j (v_j . v);  lambda = v . w;  v = w / ||w||
Lanczos (`iterations` products, full reorthogonalization):
    T = tridiag(beta, alpha, beta) of the Krylov basis Q;  lambda = eigvalsh(T)
```

Power iteration converges to the eigenvalues of largest magnitude, at the rate
`|lambda_{i+1} / lambda_i|` per product; Lanczos returns the `k` largest
(algebraic) Ritz values, and converges much faster for the same products.
References: C. Lanczos, J. Res. Natl. Bur. Stand. 45 (1950); Golub and Van
Loan, *Matrix Computations*, 4th ed., sections 8.2 and 10.1; Yao et al.,
"PyHessian: Neural Networks Through the Lens of the Hessian", 2020,
https://arxiv.org/abs/1912.07145
"""

import numpy as np


def power_iteration(matvec, start_vectors, k, iterations):
    """The `k` eigenvalues of largest magnitude, by deflated power iteration.

    Args:
        matvec: `v -> H v` for a symmetric `H`, on float64 vectors.
        start_vectors: `k` start vectors (rows), not orthogonal to the eigenvectors.
        k: how many eigenvalues.
        iterations: products per eigenvalue.

    Returns:
        `(eigenvalues, residuals)`, with `residuals[i] = ||H v_i - lambda_i v_i||`
        for the final unit vector `v_i`, from the last product (no extra cost).
    """
    values, vectors, residuals = [], [], []

    def deflated(v):
        product = matvec(v)
        for value, vector in zip(values, vectors):
            product = product - value * vector * (vector @ v)
        return product

    for i in range(k):
        v = start_vectors[i]
        for _ in range(iterations):
            for vector in vectors:  # keep v out of the deflated eigenvectors' span
                v = v - vector * (vector @ v)
            estimate = v / np.linalg.norm(v)
            product = deflated(estimate)
            value = float(estimate @ product)
            residual = float(np.linalg.norm(product - value * estimate))
            v = product
            if not np.any(v):  # H v = 0: v is an eigenvector of eigenvalue 0
                break
        values.append(value)
        vectors.append(estimate)
        residuals.append(residual)
    order = np.argsort(-np.abs(values), kind="stable")
    return [values[i] for i in order], [residuals[i] for i in order]


def lanczos(matvec, start_vector, k, iterations):
    """The `k` largest Ritz values after `iterations` Lanczos steps.

    Args:
        matvec: `v -> H v` for a symmetric `H`, on float64 vectors.
        start_vector: the start vector.
        k: how many eigenvalues, `<= iterations`.
        iterations: Lanczos steps (products); stops early when the Krylov
            space is invariant (an exact result).

    Returns:
        `(eigenvalues, residuals)`, largest first; `residuals[i] = |beta_m s_mi|`,
        the norm of `H y - theta y` for the Ritz pair `(theta, y)`.
    """
    basis = [start_vector / np.linalg.norm(start_vector)]
    alphas, betas = [], []
    scale = 0.0
    for j in range(iterations):
        w = matvec(basis[j])
        alphas.append(float(basis[j] @ w))
        for q in basis:  # full reorthogonalization, twice is enough (Kahan)
            w = w - q * (q @ w)
        for q in basis:
            w = w - q * (q @ w)
        beta = float(np.linalg.norm(w))
        scale = max(scale, abs(alphas[-1]), beta)
        if j == iterations - 1 or beta <= 1e-12 * scale:
            betas.append(beta)
            break
        betas.append(beta)
        basis.append(w / beta)
    size = len(alphas)
    tridiagonal = np.diag(alphas) + np.diag(betas[: size - 1], 1) + np.diag(betas[: size - 1], -1)
    ritz, vectors = np.linalg.eigh(tridiagonal)
    order = np.argsort(-ritz)[:k]
    return [float(ritz[i]) for i in order], [abs(betas[-1] * vectors[-1, i]) for i in order]
