"""Figure 2-style grids: image, target saliency, GradCAM, EigenCAM, the DiffGradCAMs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor

FIGURE_METHODS = ("gradcam", "eigencam", "meandiffgradcam", "maxdiffgradcam", "lsediffgradcam")
TITLES = {
    "gradcam": "GradCAM",
    "eigencam": "EigenCAM",
    "meandiffgradcam": "MeanDiffGradCAM",
    "maxdiffgradcam": "MaxDiffGradCAM",
    "lsediffgradcam": "LSEDiffGradCAM",
}


def display_image(image: Tensor) -> np.ndarray:
    """A normalised ``[3, H, W]`` tensor as an ``[H, W, 3]`` array in [0, 1] (per-image
    min-max). matplotlib gets numpy arrays: a tensor makes numpy 2 warn on every imshow."""
    image = image.detach().float().cpu()
    image = (image - image.min()) / (image.max() - image.min() + 1e-7)
    return image.permute(1, 2, 0).numpy()


def figure_grid(
    images: Tensor,
    maps: dict[str, Tensor],
    targets: Optional[Tensor],
    title: str,
    path: Path,
    methods: Sequence[str] = FIGURE_METHODS,
) -> Path:
    """One row per image: the image, the target saliency overlaid (omitted when None),
    then each method's map (input-sized, in [0, 1]) overlaid with the jet colormap."""
    methods = [m for m in methods if m in maps]
    columns = ["Image"] + (["Target saliency"] if targets is not None else []) + [TITLES.get(m, m) for m in methods]
    rows = images.shape[0]
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.9 * len(columns), 1.9 * rows + 0.4), squeeze=False)
    for r in range(rows):
        shown = display_image(images[r])
        panels = [None] + ([targets[r]] if targets is not None else []) + [maps[m][r] for m in methods]
        for c, overlay in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(shown)
            if overlay is not None:
                overlay = overlay.detach().float().cpu()
                if overlay.shape != shown.shape[:2]:
                    overlay = torch.nn.functional.interpolate(
                        overlay[None, None], size=shown.shape[:2], mode="nearest"
                    )[0, 0]
                ax.imshow(overlay.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
