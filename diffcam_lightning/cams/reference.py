"""pytorch-grad-cam as a reference: the same methods through the ``grad-cam`` package,
one method (and one full backward) at a time. Used by benchmarks and the report's
run-time table; needs ``pip install grad-cam``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

from .modes import preserved_grads, preserved_modes
from .targets import beta

# our method name -> (pytorch-grad-cam class name, DiffGradCAM baseline or None for y_c)
_CLASSES = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "gradcamelementwise": "GradCAMElementWise",
    "eigengradcam": "EigenGradCAM",
}
_TARGETED = {**_CLASSES, "shapleycam": "ShapleyCAM", "fullgrad": "FullGrad"}
REFERENCE_METHODS: dict[str, tuple[str, Optional[str]]] = {
    **{name: (cls, None) for name, cls in _TARGETED.items()},
    "eigencam": ("EigenCAM", None),
    "scorecam": ("ScoreCAM", None),
    "ablationcam": ("AblationCAM", None),
    "kpcacam": ("KPCA_CAM", None),
    "fem": ("FEM", None),
    "randomcam": ("RandomCAM", None),
    "finercam": ("GradCAM", "finer"),
    **{f"{k}diff{name}": (cls, k) for name, cls in _TARGETED.items() for k in ("mean", "max", "lse")},
    **{f"{k}{name}": (cls, k) for name, cls in _TARGETED.items() for k in ("rest", "finer", "softmax")},
}
"""Our method -> (pytorch-grad-cam class, its target: None = y_c, a DiffGradCAM baseline,
``rest``/``softmax``/``finer`` = its ClassifierOutputReST / ClassifierOutputSoftmaxTarget /
FinerWeightedTarget)."""


_EIGEN = ("EigenCAM", "EigenGradCAM")  # compared with their sign correction: sign_corrected()


def salient_sign_numpy(projections: NDArray[Any]) -> NDArray[np.float32]:
    """pytorch-grad-cam's own sign correction (``get_2d_projection_with_sign_correction``,
    Seg-Eigen-CAM eq. 13) on ``[B, h, w]`` projections: flip a map when ``|min| > |max|``."""
    import numpy as np

    flip = np.abs(projections.min(axis=(1, 2))) > np.abs(projections.max(axis=(1, 2)))
    return np.where(flip[:, None, None], -projections, projections).astype(np.float32)


def sign_corrected(class_name: str) -> type[Any]:
    """pytorch-grad-cam's ``EigenCAM`` / ``EigenGradCAM`` with the sign convention ours
    documents (``methods.salient_sign``): its own SVD, then its own sign correction. Its
    plain classes keep whichever sign numpy's LAPACK returns, which no solver reproduces."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    base = getattr(pytorch_grad_cam, class_name)
    use_grads = class_name == "EigenGradCAM"

    class SignCorrected(base):  # type: ignore[misc, valid-type]
        def get_cam_image(
            self,
            input_tensor: Tensor,
            target_layer: nn.Module,
            target_category: Any,
            activations: NDArray[Any],
            grads: NDArray[Any],
            eigen_smooth: bool,
        ) -> NDArray[np.float32]:
            return salient_sign_numpy(get_2d_projection(grads * activations if use_grads else activations))

    SignCorrected.__name__ = f"SignCorrected{class_name}"
    return SignCorrected


def available() -> bool:
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        return False
    return True


class DiffTarget:
    """A pytorch-grad-cam target computing ``y_c - beta(other logits)`` per sample."""

    def __init__(self, category: int, kind: str) -> None:
        self.category, self.kind = int(category), kind

    def __call__(self, output: Tensor) -> Tensor:
        target = torch.tensor([self.category], device=output.device)
        return output[self.category] - beta(output[None], target, self.kind)[0]


def reference_cam(
    model: nn.Module,
    layer: nn.Module,
    x: Tensor,
    targets: Sequence[int],
    method: str,
    reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
    scorecam_batch_size: int = 32,
) -> NDArray[np.float32]:
    """One method through pytorch-grad-cam: a numpy array ``[B, H, W]`` at input size
    (``reshape_transform``: its option for token / channels-last layers). ScoreCAM runs
    its masked inputs in batches of ``scorecam_batch_size`` (its default is 16; ours is
    32: comparisons use the same size).

    pytorch-grad-cam calls ``model.eval()`` and backpropagates into ``.grad``; every
    submodule's mode and every parameter's ``.grad`` are restored here afterwards.
    Its RandomCAM draws from NumPy's global RNG (seed it first).
    """
    import pytorch_grad_cam

    if method not in REFERENCE_METHODS:
        raise ValueError(f"No pytorch-grad-cam reference for {method!r}; valid: {', '.join(REFERENCE_METHODS)}.")
    class_name, kind = REFERENCE_METHODS[method]
    cam_targets = _targets(model, x, targets, kind)
    layers = [] if class_name == "FullGrad" else [layer]
    cam_class = sign_corrected(class_name) if class_name in _EIGEN else getattr(pytorch_grad_cam, class_name)
    with preserved_modes(model), preserved_grads(model):
        with cam_class(model, target_layers=layers, reshape_transform=reshape_transform) as cam:
            cam.batch_size = scorecam_batch_size  # read by its ScoreCAM only
            maps: NDArray[np.float32] = cam(x, targets=cam_targets)
            return maps


def _targets(model: nn.Module, x: Tensor, targets: Sequence[int], kind: Optional[str]) -> list[Any]:
    """pytorch-grad-cam's target objects for our backprop target ``kind``."""
    from pytorch_grad_cam.utils import model_targets as mt

    from .targets import nearest_classes

    if kind is None:
        return [mt.ClassifierOutputTarget(int(t)) for t in targets]
    if kind == "rest":
        return [mt.ClassifierOutputReST(int(t)) for t in targets]
    if kind == "softmax":
        return [mt.ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    if kind == "finer":
        with torch.no_grad():
            logits = model(x)
        classes = torch.as_tensor(list(targets), device=logits.device)
        others = nearest_classes(logits, classes, (1, 2, 3)).tolist()
        return [mt.FinerWeightedTarget(int(t), o, 1.0) for t, o in zip(targets, others)]
    return [DiffTarget(t, kind) for t in targets]
