"""The explain loop: a LightningModule whose ``predict_step`` runs the CAM engine (one
forward + one batched backward per explained rank), and a prediction writer that saves
every image's PNG, raw maps and table rows as the batches come, on every rank.

Raw maps: ``maps/<id>.npz`` holds, for each method, float32 ``[k, h, w]`` on the CAM
grid after ReLU and before any resizing or normalisation (k = explained classes), plus
``classes`` (int64 ``[k]``) and ``probabilities`` (float32 ``[k]``). The PNG overlays are
these maps resized bilinearly to the input view and min-max normalised (the engine's
``size="input"`` post-processing)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from typing_extensions import override

from ..cams import CAMEngine
from ..cams.postprocess import postprocess
from ..predict_loop import RankCSVWriter
from .classes import TargetChoice
from .inputs import ExplainInputError, ImageItem
from .render import explain_png

PREDICTION_FIELDS = (
    "image", "rank", "class", "class_name", "probability",
    "predicted", "predicted_name", "predicted_probability", "label", "png", "maps",
)  # fmt: skip
SKIPPED_FIELDS = ("image", "error")


class ExplainModule(pl.LightningModule):
    """The network of ``diffcam explain``; ``predict_step`` explains a batch.

    One engine pass per explained rank (the first for the chosen classes, then ranks
    2..k with ``--top_k``); the CPU tensors it returns are what :class:`ExplainWriter`
    saves.

    Args:
        model: The network, put in eval mode.
        methods: Canonical CAM method names (``cams.method_names``).
        choice: Which classes to explain.
        items: The images, in the dataset's order (for error messages).
        labels: The manifest's class index of every image (-1 where none).
        target_layer: The CAM layer (``None``: automatic).
        layout: The CAM layer's output layout (``None``: automatic).
        skip_unreadable: Skip an undecodable image (listed in ``skipped.csv``) instead of
            stopping at it.

    Attributes:
        engine: The :class:`~diffcam_lightning.CAMEngine` over ``model``;
            ``engine.target_layer`` names the layer it explains.

    Raises:
        ExplainInputError: In ``predict_step``, at an undecodable image without
            ``skip_unreadable``.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        >>> items = [ImageItem(Path("a.jpg")), ImageItem(Path("b.jpg"))]
        >>> module = ExplainModule(model, ["gradcam"], TargetChoice("predicted", k=2), items, [-1, -1])
        >>> batch = {"image": torch.randn(2, 3, 16, 16), "index": torch.tensor([0, 1]),
        ...          "ok": torch.tensor([True, True]), "error": ["", ""]}
        >>> out = module.predict_step(batch, 0)
        >>> out["classes"].shape, out["maps"]["gradcam"].shape  # [k, B], [k, B, h, w]
        (torch.Size([2, 2]), torch.Size([2, 2, 14, 14]))
    """

    def __init__(
        self,
        model: nn.Module,
        methods: Sequence[str],
        choice: TargetChoice,
        items: Sequence[ImageItem],
        labels: Sequence[int],
        target_layer: Optional[str] = None,
        layout: Optional[str] = None,
        skip_unreadable: bool = False,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.engine = CAMEngine(self.model, target_layer, layout=layout)
        self.methods, self.choice = list(methods), choice
        self.paths = [str(item.path) for item in items]
        self.labels = torch.tensor(list(labels), dtype=torch.long)
        self.skip_unreadable = skip_unreadable

    @override
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        ok, index = batch["ok"].bool(), batch["index"]
        bad = [(int(i), e) for i, e, good in zip(index.tolist(), batch["error"], ok.tolist()) if not good]
        if bad and not self.skip_unreadable:
            i, error = bad[0]
            raise ExplainInputError(
                f"Cannot read image {self.paths[i]}: {error} (--skip_unreadable lists such files in skipped.csv and goes on)."
            )
        out: dict[str, Any] = {"skipped": [(self.paths[i], e) for i, e in bad], "index": index[ok].cpu()}
        if not bool(ok.any()):
            return out
        x = batch["image"][ok]
        labels = self.labels[index[ok].cpu()].to(x.device)
        first = self.engine.compute(x, self.choice.first(labels), self.methods, normalize=False)
        passes = [first] + [
            self.engine.compute(x, t, self.methods, normalize=False) for t in self.choice.more(first.logits)
        ]
        probs = first.logits.float().softmax(1)
        classes = torch.stack([p.targets for p in passes])  # [k, B]
        out.update(
            image=x.float().cpu(),
            probs=probs.cpu(),
            classes=classes.cpu(),
            maps={m: torch.stack([p.maps[m] for p in passes]).cpu() for m in self.methods},  # [k, B, h, w]
            layer=first.layer,
        )
        return out


class ExplainWriter(RankCSVWriter):
    """Writes ``images/<id>.png``, ``maps/<id>.npz`` and this rank's table rows.

    The rows go to ``.parts/predictions.rank<R>.csv`` and ``.parts/skipped.rank<R>.csv``
    (:meth:`parts`), which :func:`~diffcam_lightning.explain.run.run_explain` merges on
    rank zero.

    Args:
        output_dir: The run's folder (``--output_dir``).
        items: The images, in the dataset's order (a prediction's ``index`` points here).
        names: The model's class names, by class index.
        mean: The normalisation mean of the input, to show the image as the model saw it.
        std: The normalisation standard deviation of the input.
    """

    def __init__(
        self,
        output_dir: Path,
        items: Sequence[ImageItem],
        names: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.out = Path(output_dir)
        self.items, self.names = list(items), list(names)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def parts(self, kind: str, rank: int) -> Path:
        """This rank's file of the table ``kind`` (``predictions`` or ``skipped``)."""
        return self.out / ".parts" / f"{kind}.rank{rank}.csv"

    @override
    def batch_rows(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any
    ) -> Iterator[tuple[Path, Sequence[str], list[dict[str, Any]]]]:
        rank = trainer.global_rank
        if prediction["skipped"]:
            skipped = [dict(zip(SKIPPED_FIELDS, s)) for s in prediction["skipped"]]
            yield self.parts("skipped", rank), SKIPPED_FIELDS, skipped
        if "maps" in prediction:
            rows = []
            for b, index in enumerate(prediction["index"].tolist()):
                rows += self._write_one(index, b, prediction)
            yield self.parts("predictions", rank), PREDICTION_FIELDS, rows

    def _write_one(self, index: int, b: int, pred: dict[str, Any]) -> list[dict[str, Any]]:
        item = self.items[index]
        stem = f"{index:05d}_{item.path.stem}"
        probs, classes = pred["probs"][b], pred["classes"][:, b]
        image = pred["image"][b]
        view = ((image * self.std + self.mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        raw = {m: maps[:, b] for m, maps in pred["maps"].items()}  # [k, h, w]
        size = tuple(image.shape[-2:])
        shown = {m: postprocess(r, size, normalize=True).numpy() for m, r in raw.items()}
        titles = [f"{self.names[c]} ({probs[c]:.2f})" for c in classes.tolist()]
        png = explain_png(
            view,
            [(t, {m: s[r] for m, s in shown.items()}) for r, t in enumerate(titles)],
            self.out / "images" / f"{stem}.png",
        )
        npz = self.out / "maps" / f"{stem}.npz"
        npz.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            npz, classes=classes.numpy(), probabilities=probs[classes].numpy(), **{m: r.numpy() for m, r in raw.items()}
        )
        top = int(probs.argmax())
        return [
            {
                "image": str(item.path), "rank": r + 1, "class": c, "class_name": self.names[c],
                "probability": f"{float(probs[c]):.6f}", "predicted": top, "predicted_name": self.names[top],
                "predicted_probability": f"{float(probs[top]):.6f}", "label": item.label or "",
                "png": str(png.relative_to(self.out)), "maps": str(npz.relative_to(self.out)),
            }
            for r, c in enumerate(classes.tolist())
        ]  # fmt: skip
