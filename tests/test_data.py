"""Data: the synthetic generator's determinism and content, folder/CSV modules, errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffcam_lightning.data import (
    CSVDataModule,
    DataError,
    ImageFolderDataModule,
    SyntheticDataModule,
    SyntheticShapes,
    SyntheticSpec,
)
from diffcam_lightning.data.synthetic import class_shape_and_colour

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_per_index_and_seeded():
    a = SyntheticShapes(20, "train", SyntheticSpec(seed=3))
    b = SyntheticShapes(20, "train", SyntheticSpec(seed=3))
    for i in (0, 7, 19):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["saliency"], b[i]["saliency"])
    c = SyntheticShapes(20, "train", SyntheticSpec(seed=4))
    assert not torch.equal(a[0]["image"], c[0]["image"])
    val = SyntheticShapes(20, "val", SyntheticSpec(seed=3))
    assert not torch.equal(a[0]["image"], val[0]["image"])  # splits are disjoint draws


def test_synthetic_sample_content():
    spec = SyntheticSpec(image_size=48)
    ds = SyntheticShapes(14, "train", spec)
    labels = [int(ds[i]["label"]) for i in range(14)]
    assert sorted(labels) == sorted(list(range(7)) * 2)  # balanced
    for i in range(14):
        s = ds[i]
        assert s["image"].shape == (3, 48, 48) and s["saliency"].shape == (48, 48)
        mask = s["saliency"].bool()
        assert 0.03 < mask.float().mean() < 0.4  # one object of a sensible size
        # the object carries its class colour (saturated), unlike the grey clutter
        rgb = (s["image"] * 0.5 + 0.5)[:, mask]
        _, colour = class_shape_and_colour(spec, int(s["label"]))
        assert torch.allclose(rgb.median(dim=1).values, torch.tensor(colour), atol=0.2)


def test_presets_and_distinct_classes():
    few, many = SyntheticDataModule(preset="few"), SyntheticDataModule(preset="many")
    assert few.num_classes == 7 and many.num_classes == 100
    spec = SyntheticSpec(num_classes=100)
    pairs = {(s, tuple(round(c, 3) for c in col)) for s, col in (class_shape_and_colour(spec, k) for k in range(100))}
    assert len(pairs) == 100
    with pytest.raises(ValueError, match="preset.*valid: few, many"):
        SyntheticDataModule(preset="huge")


def test_synthetic_datamodule_batches_are_dicts():
    dm = SyntheticDataModule(image_size=32, train_size=16, val_size=8, test_size=8, batch_size=8)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "label", "saliency", "has_saliency"}
    assert batch["image"].shape == (8, 3, 32, 32) and batch["saliency"].shape == (8, 32, 32)
    assert batch["label"].dtype == torch.long and batch["has_saliency"].all()
    assert len(dm.val_dataloader().dataset) == 8 and len(dm.test_dataloader().dataset) == 8


# ---------------------------------------------------------------- files


def _png(path: Path, value, size=(20, 16), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3) if mode == "RGB" else (size[1], size[0]), value, dtype=np.uint8)
    Image.fromarray(arr, mode=mode).save(path)
    return path


CONFIG = {"image_size": 16, "crop_pct": 1.0, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


@pytest.fixture
def folder(tmp_path):
    for cls, value in (("cat", 50), ("dog", 200)):
        for k in range(3):
            _png(tmp_path / "train" / cls / f"{k}.png", value)
    sal = np.zeros((16, 20), dtype=np.uint8)
    sal[:, :10] = 255  # left half salient
    for cls in ("cat", "dog"):
        for k in range(2):  # image 2 of each class has no map
            (tmp_path / "sal" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(sal, mode="L").save(tmp_path / "sal" / cls / f"{k}.png")
    return tmp_path


def test_image_folder_module_with_optional_saliency(folder):
    dm = ImageFolderDataModule(
        str(folder / "train"),
        saliency_dir=str(folder / "sal"),
        data_config=CONFIG,
        hflip=False,
        val_fraction=0.0,
        batch_size=6,
        num_workers=0,
    )
    assert dm.num_classes == 2 and dm.classes == ["cat", "dog"]
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (6, 3, 16, 16)
    assert int(batch["has_saliency"].sum()) == 4  # two images without a map are kept, flagged
    missing = ~batch["has_saliency"]
    assert torch.equal(batch["saliency"][missing], torch.zeros(2, 16, 16))  # NaN-free placeholder
    present = batch["saliency"][batch["has_saliency"]]
    # the map went through the same resize + centre crop as the image: left part salient
    assert (present[:, :, :6] > 0.9).all() and (present[:, :, -6:] < 0.1).all()
    labels = batch["label"].tolist()
    values = batch["image"][:, 0, 0, 0]
    for lab, v in zip(labels, values):
        assert v.item() == pytest.approx((50 if lab == 0 else 200) / 255, abs=1e-3)


def test_image_folder_split_and_unknown_class(folder):
    dm = ImageFolderDataModule(str(folder / "train"), data_config=CONFIG, val_fraction=0.34, num_workers=0)
    dm.setup("fit")
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 6 and len(dm.datasets["val"]) == 2
    _png(folder / "val" / "bird" / "0.png", 10)
    dm = ImageFolderDataModule(str(folder / "train"), val_dir=str(folder / "val"), data_config=CONFIG, num_workers=0)
    with pytest.raises(DataError, match=r"bird.*cat, dog"):
        dm.setup("fit")


def _manifest(path: Path, rows: list[str], header="image,label,saliency") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_csv_module_reads_labels_and_maps(folder):
    csv = _manifest(folder / "train.csv", ["train/cat/0.png,cat,sal/cat/0.png", "train/dog/1.png,dog,"])
    dm = CSVDataModule(str(csv), data_config=CONFIG, val_fraction=0.0, batch_size=2, num_workers=0)
    assert dm.classes == ["cat", "dog"]
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["has_saliency"].tolist() == [True, False] or batch["has_saliency"].tolist() == [False, True]
    assert sorted(batch["label"].tolist()) == [0, 1]


def test_missing_image_names_file_and_row(folder):
    csv = _manifest(folder / "m.csv", ["train/cat/0.png,cat,", "train/cat/nope.png,cat,"])
    with pytest.raises(DataError, match=r"nope\.png.*row 3 of .*m\.csv"):
        CSVDataModule(str(csv), data_config=CONFIG, num_workers=0).setup("fit")


def test_missing_saliency_file_names_file_and_row(folder):
    csv = _manifest(folder / "m.csv", ["train/cat/0.png,cat,sal/cat/missing.png"])
    with pytest.raises(DataError, match=r"saliency file .*missing\.png.*row 2 of .*m\.csv"):
        CSVDataModule(str(csv), data_config=CONFIG, num_workers=0).setup("fit")


def test_unknown_label_names_row_and_valid_labels(folder):
    train = _manifest(folder / "train.csv", ["train/cat/0.png,cat,", "train/dog/0.png,dog,"])
    val = _manifest(folder / "val.csv", ["train/cat/1.png,cat,", "train/dog/1.png,horse,"])
    dm = CSVDataModule(str(train), val_csv=str(val), data_config=CONFIG, num_workers=0)
    with pytest.raises(DataError, match=r"Unknown label 'horse' \(row 3 of .*val\.csv\).*cat, dog"):
        dm.setup("fit")


def test_bad_manifest_names_file_and_missing_column(folder):
    csv = _manifest(folder / "bad.csv", ["train/cat/0.png,cat"], header="path,class")
    with pytest.raises(DataError, match=r"bad\.csv.*lacks column\(s\) image, label"):
        CSVDataModule(str(csv), data_config=CONFIG, num_workers=0)


def test_unreadable_image_names_file(folder):
    (folder / "train" / "cat" / "broken.png").write_bytes(b"not an image")
    dm = ImageFolderDataModule(str(folder / "train"), data_config=CONFIG, val_fraction=0.0, num_workers=0)
    dm.setup("fit")
    ds = dm.datasets["train"]
    idx = next(i for i, s in enumerate(ds.samples) if s.image.name == "broken.png")
    with pytest.raises(DataError, match=r"Cannot read image file .*broken\.png"):
        ds[idx]


def test_transforms_follow_the_timm_model_config():
    from diffcam_lightning.data import timm_data_config

    cfg = timm_data_config("inception_v3")
    assert cfg["input_size"] == (3, 299, 299) and tuple(cfg["mean"]) == (0.5, 0.5, 0.5)
    assert timm_data_config("resnet50", {"image_size": 64})["input_size"] == (3, 64, 64)
    with pytest.raises(ValueError, match="Unknown data config key 'colour'"):
        timm_data_config("resnet50", {"colour": 1})


def test_folder_with_human_saliency_trains_end_to_end_with_a_logger(folder, tmp_path):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from diffcam_lightning import SaliencyClassifier

    dm = ImageFolderDataModule(
        str(folder / "train"),
        saliency_dir=str(folder / "sal"),
        data_config={"image_size": 48},
        val_fraction=0.34,
        batch_size=4,
        num_workers=0,
    )  # data model_name (None) differs from the model's: hparams must not clash
    model = SaliencyClassifier("test_resnet", num_classes=dm.num_classes, saliency_target="human")
    t = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=CSVLogger(tmp_path / "logs"),
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    with pytest.warns(UserWarning, match="SHAM .* covers every pixel of the 2x2 CAM grid"):  # 48 px: a 2x2 grid
        t.fit(model, dm)
    assert torch.isfinite(t.callback_metrics["train/loss"]) and torch.isfinite(t.callback_metrics["val/saliency_mse"])
    train_missing, val_missing = dm.datasets["train"].missing_saliency, dm.datasets["val"].missing_saliency
    assert train_missing + val_missing == 2  # images 2 of each class have no map
    assert t.callback_metrics["train/saliency_missing"].item() == train_missing
    assert t.callback_metrics["val/saliency_missing"].item() == val_missing
