"""Eigen methods: the principal direction of the activations (or of gradient x
activation) over space, linear (SVD) or through a kernel (KPCA)."""

from __future__ import annotations

import torch
from torch import Tensor

from .registry import CAMContext


def eigengradcam(ctx: CAMContext) -> Tensor:
    """EigenGradCAM: first principal component of gradient x activation (class-aware
    EigenCAM, no sign correction, as pytorch-grad-cam)."""
    return first_component(ctx.grad * ctx.activations)


def eigencam(ctx: CAMContext) -> Tensor:
    """EigenCAM: projection of the spatially centred activations on their first
    principal component (per sample, no sign correction, as pytorch-grad-cam)."""
    return first_component(ctx.activations)


def first_component(features: Tensor) -> Tensor:
    """Per sample, the ``[h*w, K]`` features centred over space and projected on their
    first right singular vector: ``[B, h, w]``."""
    # float64 for a stable SVD where the device has it (MPS does not)
    precise = torch.float32 if features.device.type == "mps" else torch.float64
    acts = torch.nan_to_num(features.to(precise), nan=0.0)
    b, k, h, w = acts.shape
    flat = acts.reshape(b, k, h * w).transpose(1, 2)  # [B, hw, K]
    flat = flat - flat.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(flat, full_matrices=False)
    projection = flat @ vh[:, 0, :].unsqueeze(-1)  # [B, hw, 1]
    # the SVD needs finite input; an image with non-finite activations gets a NaN map, not zeros
    broken = ~torch.isfinite(features).flatten(1).all(dim=1)
    projection = projection.masked_fill(broken.view(b, 1, 1), float("nan"))
    return projection.reshape(b, h, w).float()


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
    kernel = kernel - kernel.mean(dim=1, keepdim=True) - kernel.mean(dim=2, keepdim=True) + kernel.mean(dim=(1, 2), keepdim=True)
    values, vectors = torch.linalg.eigh(kernel)  # ascending
    top, value = vectors[..., -1], values[..., -1].clamp(min=0)
    largest = top.abs().argmax(dim=1, keepdim=True)
    top = top * torch.sign(top.gather(1, largest))
    return (top * value.sqrt()[:, None]).reshape(b, h, w).float()


def kpcacam(ctx: CAMContext) -> Tensor:
    """KPCA-CAM (Karmani et al. 2024): EigenCAM with kernel PCA (sigmoid kernel)."""
    return kernel_component(ctx.activations)
