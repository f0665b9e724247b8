"""ROAD's noisy linear imputation: the sparse system of each image solved by conjugate
gradients on any device or by sparse LU on the CPU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Optional

import torch
from torch import Tensor
from torch.nn import functional as F

# ROAD's neighbour weights (Rong et al.): 1/6 for the 4 direct, 1/12 for the 4 diagonal neighbours
ROAD_KERNEL = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))
Solver = Literal["auto", "cg", "direct"]


def noisy_linear_impute(
    x: Tensor,
    keep: Tensor,
    noise: float = 0.01,
    tol: float = 1e-7,
    max_iter: int = 5000,
    generator: Optional[torch.Generator] = None,
    solver: Solver = "auto",
) -> Tensor:
    """ROAD's imputation: each removed pixel (``keep == False``) becomes the weighted mean
    of its 8 neighbours (``ROAD_KERNEL``), known ones fixed, plus ``noise * N(0, 1)``.

    ``solver``: ``"cg"`` solves the sparse system matrix-free by conjugate gradients on
    ``x``'s device, all images and channels at once (the operator is symmetric: the kernel
    is), in float64 where the device has it; ``"direct"`` factorises it with SciPy's sparse
    LU on the CPU, one image at a time (the faster choice there: measured 6.7x faster than
    CG at 64 px); ``"auto"`` = direct for CPU tensors, CG elsewhere.
    ``x [N, C, H, W]``, ``keep [N, H, W]`` bool."""
    if solver not in IMPUTE_SOLVERS:
        raise ValueError(f"Unknown ROAD solver {solver!r}; valid: {', '.join(IMPUTE_SOLVERS)}.")
    if solver == "auto":
        solver = "direct" if x.device.type == "cpu" else "cg"
    dtype = torch.float32 if x.device.type == "mps" else torch.float64
    n, c, h, w = x.shape
    img = x.to(dtype).reshape(n * c, 1, h, w)
    known = keep.to(device=x.device, dtype=dtype).repeat_interleave(c, dim=0).unsqueeze(1)
    missing = 1 - known
    if solver == "direct":
        filled = _direct_impute(x.to(dtype), keep.to(x.device)).reshape(n * c, 1, h, w)
        return _add_noise(filled, missing, noise, generator).reshape(n, c, h, w).to(x.dtype)
    weight_sum = neighbour_sum(torch.ones(1, 1, h, w, dtype=dtype, device=x.device))

    def operator(v: Tensor) -> Tensor:  # -(L v) on the missing pixels: positive semi-definite
        v = v * missing
        return (weight_sum * v - neighbour_sum(v)) * missing

    rhs = neighbour_sum(img * known) * missing
    solution = _conjugate_gradient(operator, rhs, tol, max_iter)
    filled = img * known + solution * missing
    return _add_noise(filled, missing, noise, generator).reshape(n, c, h, w).to(x.dtype)


IMPUTE_SOLVERS: tuple[Solver, ...] = ("auto", "cg", "direct")


def _add_noise(filled: Tensor, missing: Tensor, noise: float, generator: Optional[torch.Generator]) -> Tensor:
    if not noise:
        return filled
    device = generator.device if generator is not None else filled.device
    draw = torch.randn(filled.shape, generator=generator, dtype=filled.dtype, device=device).to(filled.device)
    return filled + noise * missing * draw


def _direct_impute(x: Tensor, keep: Tensor) -> Tensor:
    """The same system as the CG path, assembled as a SciPy sparse matrix per image (its
    mask is shared by the channels) and solved by sparse LU for all channels at once."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import splu

    n, c, h, w = x.shape
    images = x.detach().cpu().numpy().reshape(n, c, h * w)
    masks = keep.detach().cpu().numpy().reshape(n, h * w)
    out = images.copy()
    rows, cols = np.divmod(np.arange(h * w), w)
    for i in range(n):
        unknown = np.flatnonzero(~masks[i])
        if unknown.size == 0:
            continue
        var = np.full(h * w, -1)
        var[unknown] = np.arange(unknown.size)
        diag = np.zeros(unknown.size)
        rhs = np.zeros((unknown.size, c))
        entries_r, entries_c, entries_v = [], [], []
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                weight = ROAD_KERNEL[dy + 1][dx + 1]
                if not weight:
                    continue
                r, q = rows[unknown] + dy, cols[unknown] + dx
                inside = (r >= 0) & (r < h) & (q >= 0) & (q < w)
                diag[inside] += weight
                neighbour = r[inside] * w + q[inside]
                own = np.flatnonzero(inside)
                free = ~masks[i][neighbour]
                entries_r.append(own[free])
                entries_c.append(var[neighbour[free]])
                entries_v.append(np.full(int(free.sum()), -weight))
                rhs[own[~free]] += weight * images[i][:, neighbour[~free]].T
        entries_r.append(np.arange(unknown.size))
        entries_c.append(np.arange(unknown.size))
        entries_v.append(diag)
        system = coo_matrix(
            (np.concatenate(entries_v), (np.concatenate(entries_r), np.concatenate(entries_c))),
            shape=(unknown.size, unknown.size),
        ).tocsc()
        out[i][:, unknown] = splu(system).solve(rhs).T
    return torch.from_numpy(out.reshape(n, c, h, w)).to(x.device)


def neighbour_sum(v: Tensor) -> Tensor:
    """``sum_j ROAD_KERNEL_j * v_j`` over the 8 neighbours (zero outside the image), by
    shifted adds: much faster than a 3x3 convolution in float64 on a CPU."""
    padded = F.pad(v, (1, 1, 1, 1))
    h, w = v.shape[-2:]
    out = torch.zeros_like(v)
    for dy in range(3):
        for dx in range(3):
            weight = ROAD_KERNEL[dy][dx]
            if weight:
                out = out + weight * padded[..., dy : dy + h, dx : dx + w]
    return out


def _conjugate_gradient(operator: Callable[[Tensor], Tensor], rhs: Tensor, tol: float, max_iter: int) -> Tensor:
    """Solves ``operator(v) = rhs`` for each image of the batch (independent systems)."""
    dims = (1, 2, 3)
    v = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rr = (r * r).sum(dims, keepdim=True)
    stop = (tol * rhs.flatten(1).norm(dim=1).clamp(min=1e-30)).pow(2).reshape(-1, 1, 1, 1)
    for _ in range(max_iter):
        if bool((rr <= stop).all()):
            break
        ap = operator(p)
        pap = (p * ap).sum(dims, keepdim=True)
        alpha = torch.where(pap > 0, rr / pap.clamp(min=1e-300), torch.zeros_like(rr))
        v = v + alpha * p
        r = r - alpha * ap
        rr_new = (r * r).sum(dims, keepdim=True)
        p = r + torch.where(rr > 0, rr_new / rr.clamp(min=1e-300), torch.zeros_like(rr)) * p
        rr = rr_new
    return v
