"""Approximate orthogonalisation of (stacks of) matrices: G = U S V^T  ->  ~ U V^T.

Muon replaces each momentum update by the nearest semi-orthogonal matrix. Both methods here run a few
odd-polynomial iterations X <- a X + (b A + c A^2) X with A = X X^T, which push every singular value of a
suitably normalised X towards 1 while leaving the singular vectors alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Keller Jordan's quintic Newton–Schulz coefficients, tuned for the largest slope at zero rather than for
# convergence: the singular values land roughly in [0.7, 1.2] instead of at 1
# (kellerjordan.github.io/posts/muon; also torch.optim.Muon and nanochat muon.py@dfc8833). The same tuple
# is used at every iteration.
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

# Polar Express (Amsel, Persson, Musco, Gower, arXiv 2505.16932): a different, minimax-optimal polynomial per
# iteration. These five tuples are the paper's for 5 iterations with safety factor 2e-2 and cushion 2, as
# nanochat optim.py@92d63d4 uses them.
POLAR_EXPRESS_COEFFICIENTS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

# Before iterating, X is divided by (scale·||X||_F + eps), nanochat's formulas: ||X|| + 1e-7 for Newton–Schulz
# (muon.py@dfc8833), 1.01·||X|| + 1e-6 for Polar Express, whose factor 1.01 leaves room for the safety factor
# (optim.py@92d63d4). The eps is added, not a floor: a matrix whose norm is not far above it comes out smaller
# (at a norm of 1e-6, half the size), as in nanochat.
NORMALIZATION = {"newton_schulz": (1.0, 1e-7), "polar_express": (1.01, 1e-6)}

ORTHOGONALIZERS = ("polar_express", "newton_schulz")


def iteration_coefficients(method: str, steps: int) -> list[tuple[float, float, float]]:
    """The (a, b, c) tuple of each of `steps` iterations of `method`."""
    if method == "newton_schulz":
        return [NEWTON_SCHULZ_COEFFICIENTS] * steps
    if method == "polar_express":
        if steps > len(POLAR_EXPRESS_COEFFICIENTS):
            raise ValueError(f"polar_express has coefficients for at most {len(POLAR_EXPRESS_COEFFICIENTS)} steps")
        return list(POLAR_EXPRESS_COEFFICIENTS[:steps])
    raise ValueError(f"unknown orthogonalizer {method!r}, expected one of {ORTHOGONALIZERS}")


def orthogonalize(G: Tensor, method: str = "polar_express", steps: int = 5) -> Tensor:
    """Approximately orthogonalise a stack of matrices G (K, m, n), in G's dtype; the result has G's shape.

    Every matrix is first divided by its Frobenius norm (an upper bound on its spectral norm, so all singular
    values start in (0, 1]), see NORMALIZATION. Tall matrices are transposed so that the Gram matrix
    A = X X^T is the small (min(m, n))^2 one. Each iteration is two fused multiply-adds: B = b·A + c·A·A and
    X = a·X + B·X.
    """
    coefficients = iteration_coefficients(method, steps)
    scale, eps = NORMALIZATION[method]
    tall = G.size(-2) > G.size(-1)
    X = G.mT if tall else G
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * scale + eps)
    for a, b, c in coefficients:
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a)
    return X.mT if tall else X
