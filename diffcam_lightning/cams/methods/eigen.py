"""Eigen methods: the principal direction of the activations (or of gradient x
activation) over space, linear (SVD) or through a kernel (KPCA)."""

from __future__ import annotations

import torch
from torch import Tensor

from .registry import CAMContext


def eigengradcam(ctx: CAMContext) -> Tensor:
    """EigenGradCAM: first principal component of gradient x activation (class-aware
    EigenCAM; sign as :func:`first_component`)."""
    return first_component(ctx.grad * ctx.activations)


def eigencam(ctx: CAMContext) -> Tensor:
    """EigenCAM: projection of the spatially centred activations on their first
    principal component (per sample; sign as :func:`first_component`)."""
    return first_component(ctx.activations)


def first_component(features: Tensor) -> Tensor:
    """Per sample, the ``[h*w, K]`` features centred over space and projected on their
    first principal component: ``[B, h, w]``.

    The component is the top eigenvector of the smaller Gram matrix (``h*w x h*w`` when
    ``h*w < K``, as on every CNN's last layer, else ``K x K``), not a full SVD: on CPU by
    ``eigh``; elsewhere by repeated squaring (matrix products only, so no host-device
    synchronisation in the gradient path). Its sign puts the largest magnitude on the
    positive side (:func:`salient_sign`), whatever the solver.
    """
    # float64 for a stable eigenvector where the device has it (MPS does not)
    precise = torch.float32 if features.device.type == "mps" else torch.float64
    acts = features.to(precise)
    acts = torch.where(torch.isfinite(acts), acts, torch.zeros((), dtype=precise, device=acts.device))
    b, k, h, w = acts.shape
    flat = acts.reshape(b, k, h * w).transpose(1, 2)  # [B, hw, K]
    flat = flat - flat.mean(dim=1, keepdim=True)
    wide = h * w < k
    gram = flat @ flat.transpose(1, 2) if wide else flat.transpose(1, 2) @ flat  # [B, n, n], n = min(hw, K)
    top = _top_eigenvector(gram)  # [B, n]
    if wide:  # top is the left singular vector u; the right one is X^T u / |X^T u|
        right = flat.transpose(1, 2) @ top.unsqueeze(-1)
        right = right / right.norm(dim=1, keepdim=True).clamp_min(torch.finfo(precise).tiny)
    else:
        right = top.unsqueeze(-1)
    projection = (flat @ right).squeeze(-1)  # [B, hw]
    projection = projection * salient_sign(projection).unsqueeze(-1)
    # an image with non-finite activations gets a NaN map, not zeros
    broken = ~torch.isfinite(features).flatten(1).all(dim=1)
    projection = projection.masked_fill(broken.view(b, 1), float("nan"))
    return projection.reshape(b, h, w).float()


def _top_eigenvector(gram: Tensor) -> Tensor:
    """Unit eigenvector of the largest eigenvalue of each symmetric PSD ``[B, n, n]``, sign
    arbitrary: ``eigh`` on CPU; elsewhere :func:`top_eigenvector_by_squaring`, because
    ``eigh`` on CUDA reads its error flags back to the host (a synchronisation)."""
    if gram.device.type == "cpu":
        vectors: Tensor = torch.linalg.eigh(gram).eigenvectors
        return vectors[..., -1]
    return top_eigenvector_by_squaring(gram)


def top_eigenvector_by_squaring(gram: Tensor, squarings: int = 16) -> Tensor:
    """The top eigenvector by matrix products alone: ``gram^(2^squarings)`` (normalised by its
    trace at each step) is the projector on it unless the two largest eigenvalues are within
    a relative ~1e-5 of each other (power 65536); its largest column, refined by two power
    steps on ``gram``, is the vector."""
    tiny = torch.finfo(gram.dtype).tiny
    power = gram
    for _ in range(squarings):
        power = power @ power
        power = power / power.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(tiny)[:, None, None]
    column = power.diagonal(dim1=1, dim2=2).argmax(dim=1)  # the largest column of a rank-1 projector
    vector: Tensor = power.gather(2, column[:, None, None].expand(-1, power.shape[1], 1))
    for _ in range(2):
        vector = vector / vector.norm(dim=1, keepdim=True).clamp_min(tiny)
        vector = gram @ vector
    unit: Tensor = (vector / vector.norm(dim=1, keepdim=True).clamp_min(tiny)).squeeze(-1)
    return unit


def salient_sign(projection: Tensor) -> Tensor:
    """``+1`` or ``-1`` per sample ``[B, hw]``: the sign that makes the projection's largest
    magnitude positive (flip when ``|min| > |max|``; a tie keeps the sign).

    A principal component's sign is arbitrary, and the SVD's choice is an accident of the
    solver: numpy's LAPACK (what pytorch-grad-cam's ``EigenCAM`` calls), torch's MKL and the
    CUDA path here disagree image by image (on random-weight ViTs at 224 px about half the
    images; no rule on the data reproduces LAPACK's choice, which comes out of its
    iterations). This is the sign correction pytorch-grad-cam itself ships
    (``get_2d_projection_with_sign_correction``, Seg-Eigen-CAM eq. 13), so the maps equal
    that function's exactly on every device and solver, and the salient side survives the ReLU.
    """
    flip = projection.amin(dim=1).abs() > projection.amax(dim=1).abs()
    return 1.0 - 2.0 * flip.to(projection.dtype)


def kernel_component(features: Tensor, gamma: float | None = None, coef0: float = 1.0) -> Tensor:
    """Per sample, the first kernel principal component of the spatially centred
    ``[h*w, K]`` features under the sigmoid kernel ``tanh(gamma <x, y> + coef0)``
    (``gamma = 1/K`` by default): scikit-learn's ``KernelPCA(n_components=1,
    kernel="sigmoid").fit_transform``, sign fixed as it does (largest entry positive)."""
    precise = torch.float32 if features.device.type == "mps" else torch.float64
    acts = torch.nan_to_num(features.to(precise), nan=0.0)
    b, k, h, w = acts.shape
    flat = acts.reshape(b, k, h * w).transpose(1, 2)
    flat = flat - flat.mean(dim=1, keepdim=True)
    kernel = torch.tanh((1.0 / k if gamma is None else gamma) * flat @ flat.transpose(1, 2) + coef0)
    kernel = (
        kernel
        - kernel.mean(dim=1, keepdim=True)
        - kernel.mean(dim=2, keepdim=True)
        + kernel.mean(dim=(1, 2), keepdim=True)
    )
    eigen = torch.linalg.eigh(kernel)  # ascending
    values: Tensor = eigen.eigenvalues
    vectors: Tensor = eigen.eigenvectors
    top, value = vectors[..., -1], values[..., -1].clamp(min=0)
    largest = top.abs().argmax(dim=1, keepdim=True)
    top = top * torch.sign(top.gather(1, largest))
    return (top * value.sqrt()[:, None]).reshape(b, h, w).float()


def kpcacam(ctx: CAMContext) -> Tensor:
    """KPCA-CAM (Karmani et al. 2024): EigenCAM with kernel PCA (sigmoid kernel)."""
    return kernel_component(ctx.activations)
