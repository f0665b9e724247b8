"""Issue 21: inputs a user brings (label types, image modes, loggers, output folders,
manifests, checkpoints) are read as they are meant or refused, never silently changed."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.loggers import Logger

from diffcam_lightning.audit import AuditSet, BatchKeys, split_batch

# ---------------------------------------------------------------- item 7: labels for cam_class="label"


def test_a_missing_label_is_an_error_naming_the_key_and_the_keys_present():
    batch = {"image": torch.randn(3, 3, 8, 8), "target": torch.tensor([0, 1, 2])}
    with pytest.raises(ValueError, match=r"'label' \(its keys: image, target.*label_key.*missing"):
        split_batch(batch, need_label=True)
    assert split_batch(batch).labels is None  # cam_class="prediction" needs none
    assert split_batch(batch, BatchKeys(label="target"), need_label=True).labels.tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "label, expected",
    [
        (torch.tensor([2.0, 0.0, 1.0]), [2, 0, 1]),  # integral floats are labels
        (torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), [2, 0, 1]),  # one-hot
        (torch.tensor([2, 0, 1], dtype=torch.int16), [2, 0, 1]),
    ],
)
def test_integral_floats_and_one_hot_rows_are_labels(label, expected):
    got = split_batch((torch.randn(3, 3, 8, 8), label), need_label=True).labels
    assert got.dtype == torch.long and got.tolist() == expected


@pytest.mark.parametrize(
    "label, match",
    [
        (torch.tensor([0.5, 1.0, 2.0]), "floats that are no class indices"),
        (torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]]), "not one-hot"),
        (torch.tensor([True, False, True]), "dtype torch.bool"),
        (torch.tensor([0, 1]), "2 values for a batch of 3"),
    ],
)
def test_labels_that_are_no_class_indices_are_refused(label, match):
    with pytest.raises(ValueError, match=f"second element.*{match}.*cam_class='prediction'"):
        split_batch((torch.randn(3, 3, 8, 8), label), need_label=True)
    assert split_batch((torch.randn(3, 3, 8, 8), label)).labels is None  # fine for predictions


def test_an_audit_dataset_without_labels_is_refused_for_cam_class_label():
    data = [{"image": torch.randn(3, 8, 8), "class": 1} for _ in range(4)]
    with pytest.raises(ValueError, match="its keys: image, class"):
        AuditSet.from_dataset(data, 4, need_label=True)
    with pytest.raises(ValueError, match="bare image tensor"):
        AuditSet.from_batches([torch.randn(2, 3, 8, 8)], 2, need_label=True)


# ---------------------------------------------------------------- item 9: image modes

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.transforms.functional import to_tensor  # noqa: E402

from diffcam_lightning.data.decode import to_gray, to_rgb  # noqa: E402
from diffcam_lightning.data.files import DataError, _open  # noqa: E402
from diffcam_lightning.explain.inputs import ExplainDataset, ImageItem  # noqa: E402


def _ramp(top: int, dtype) -> np.ndarray:
    return np.round(np.linspace(0, top, 16 * 24)).reshape(16, 24).astype(dtype)


def _explain_pixels(path) -> torch.Tensor:
    data = ExplainDataset([ImageItem(path)], lambda image, s: (to_tensor(image), None), (16, 24))
    item = data[0]
    assert bool(item["ok"]), item["error"]
    return item["image"]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_16_bit_greyscale_ramp_keeps_its_range(tmp_path, suffix):
    path = tmp_path / f"ramp{suffix}"
    Image.fromarray(_ramp(65535, np.uint16)).save(path)  # I;16 (a medical / scientific image)
    want = torch.from_numpy(_ramp(65535, np.uint16).astype(np.float64) / 65535).float()
    for pixels in (_explain_pixels(path), to_tensor(_open(path, "RGB", "test", "image"))):
        assert pixels.shape == (3, 16, 24)
        torch.testing.assert_close(pixels[0], want, atol=1 / 255, rtol=0)  # old: 99.6 % at 1.0
        assert (pixels == 1.0).float().mean() < 0.01
    saliency = to_tensor(_open(path, "L", "test", "saliency"))[0]
    torch.testing.assert_close(saliency, want, atol=1 / 255, rtol=0)


def test_32_bit_integer_and_float_images_use_their_modes_range(tmp_path):
    Image.fromarray(_ramp(65535, np.int32)).save(tmp_path / "int.tif")  # opens as mode "I"
    Image.fromarray(_ramp(1, np.float32) * 0.5).save(tmp_path / "half.tif")  # mode "F" in [0, 0.5]
    assert to_tensor(to_rgb(Image.open(tmp_path / "int.tif"))).amax() == 1.0
    half = to_tensor(to_gray(Image.open(tmp_path / "half.tif")))
    assert abs(float(half.amax()) - 0.5) <= 1 / 255
    Image.fromarray(_ramp(1, np.float32) * 300).save(tmp_path / "wild.tif")
    with pytest.raises(DataError, match=r"wild\.tif.*'F' image must hold values in \[0, 1\].*300"):
        _open(tmp_path / "wild.tif", "RGB", "row 2 of m.csv", "image")


def test_transparency_is_composited_on_white_and_palette_transparency_too(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200  # red everywhere, but the left half transparent
    rgba[:, 4:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    shown = np.asarray(to_rgb(Image.open(tmp_path / "rgba.png")))
    assert (shown[:, :4] == 255).all() and (shown[:, 4:] == [200, 0, 0]).all()  # old: black left half
    palette = Image.fromarray((np.arange(8)[None, :].repeat(8, 0) >= 4).astype(np.uint8), "P")
    palette.putpalette([0, 0, 0, 200, 0, 0])  # index 0 (black) is the transparent one
    palette.save(tmp_path / "p.png", transparency=0)
    assert (np.asarray(to_rgb(Image.open(tmp_path / "p.png"))) == shown).all()  # old: black left half
    grey = Image.fromarray(np.stack([np.full((8, 8), 40, np.uint8), rgba[..., 3]], -1), "LA")
    assert (np.asarray(to_gray(grey))[:, :4] == 0).all()  # a saliency map's transparency is no saliency


def test_cmyk_and_exif_rotated_jpegs_come_out_as_shown(tmp_path):
    red = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    red.save(tmp_path / "cmyk.jpg")
    pixels = np.asarray(to_rgb(Image.open(tmp_path / "cmyk.jpg"))).reshape(-1, 3).mean(0)
    assert pixels[0] > 200 and pixels[1] < 60 and pixels[2] < 60
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, :15] = (255, 0, 0)  # left half red, right half black
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(wide).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    shown = _explain_pixels_any(tmp_path / "phone.jpg")
    assert shown.shape == (3, 30, 10)  # portrait, as a viewer shows it (old: 10 x 30)
    assert shown[0, :12].mean() > 0.9 and shown[0, -12:].mean() < 0.1  # red on top after the turn


def _explain_pixels_any(path) -> torch.Tensor:
    item = ExplainDataset([ImageItem(path)], lambda image, s: (to_tensor(image), None), (1, 1))[0]
    assert bool(item["ok"]), item["error"]
    return item["image"]


# ---------------------------------------------------------------- item 12: Excel's CSV UTF-8


def test_manifests_saved_with_a_byte_order_mark_are_read(tmp_path):
    from diffcam_lightning.data.files import read_manifest
    from diffcam_lightning.explain.inputs import collect_images

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_bytes("image,label,saliency\na.png,cat,\n".encode("utf-8-sig"))
    assert read_manifest(tmp_path / "m.csv") == [{"image": "a.png", "label": "cat", "saliency": ""}]
    items = collect_images([str(tmp_path / "m.csv")])
    assert [(item.path.name, item.label) for item in items] == [("a.png", "cat")]


# ---------------------------------------------------------------- item 14: class names of a checkpoint


def _named_checkpoint(path, names, arch="resnet10t"):
    from diffcam_lightning.report import ModelSource as _Source
    from diffcam_lightning.report.sources import load_model as _load

    state = _load(_Source(arch), len(names)).state_dict()
    hparams = {"model_name": arch, "num_classes": len(names), "class_names": list(names)}
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "hyper_parameters": hparams}, path)
    return path


def _class_folder(root, names):
    for name in names:
        (root / name).mkdir(parents=True)
        Image.new("RGB", (12, 12), (40, 80, 120)).save(root / name / "a.png")
    return root


@pytest.mark.parametrize("folder", [["cat", "dog", "fox"], ["ant", "bee", "fly"]])
def test_a_checkpoint_is_not_scored_on_a_folder_with_other_class_names(tmp_path, folder):
    from diffcam_lightning.report import (
        ArchitectureSpec,
        DataSpec,
        ModelSource,
        ReportOptions,
        run_report,
    )

    ckpt = _named_checkpoint(tmp_path / "named.ckpt", ["cat", "fox", "dog"])  # same count, other order
    options = ReportOptions(
        models=[ArchitectureSpec(clean=ModelSource(checkpoint=str(ckpt)), name="n")],
        output_dir=str(tmp_path / "out"),
        data=DataSpec(
            source="folder", root=str(_class_folder(tmp_path / "data", folder)), samples_per_class=1, image_size=32
        ),
        methods=["gradcam"],
    )
    with pytest.raises(
        ValueError,
        match=r"named\.ckpt was trained on classes \['cat', 'fox', 'dog'\] but the data's "
        rf"classes are \['{folder[0]}', '{folder[1]}', '{folder[2]}'\].*first difference at label",
    ):
        run_report(options, {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False})


def test_a_checkpoint_with_the_datas_class_names_loads():
    from diffcam_lightning.models.checkpoints import check_class_names

    check_class_names(["a", "b"], ["a", "b"], "x")
    check_class_names(["a", "b"], None, "x")  # index labels name nothing
    with pytest.raises(ValueError, match=r"\['b', 'a'\] but the data's classes are \['a', 'b'\]"):
        check_class_names(["b", "a"], ["a", "b"], "x")


def test_cli_ckpt_path_refuses_data_with_other_class_names(tmp_path):
    """``diffcam test --ckpt_path``: the data module's classes become the model's
    class_names; a checkpoint trained on other names (same count) is refused before it loads."""
    from diffcam_lightning import SaliencyClassifier
    from diffcam_lightning.errors import CheckpointError
    from diffcam_lightning.models.checkpoints import check_checkpoint_fits

    trained = SaliencyClassifier(num_classes=3, class_names=["ant", "bee", "fly"])
    torch.save(
        {
            "state_dict": trained.state_dict(),
            "pytorch-lightning_version": "2.6.6",
            "hyper_parameters": dict(trained.hparams),
            "diffcam": {"class_names": ["ant", "bee", "fly"]},
        },
        tmp_path / "insects.ckpt",
    )
    check_checkpoint_fits(
        tmp_path / "insects.ckpt", SaliencyClassifier(num_classes=3, class_names=["ant", "bee", "fly"])
    )
    check_checkpoint_fits(tmp_path / "insects.ckpt", SaliencyClassifier(num_classes=3))  # data without names
    with pytest.raises(CheckpointError, match=r"insects\.ckpt.*\['ant', 'bee', 'fly'\].*\['ant', 'fly', 'bee'\]"):
        check_checkpoint_fits(
            tmp_path / "insects.ckpt", SaliencyClassifier(num_classes=3, class_names=["ant", "fly", "bee"])
        )


# ---------------------------------------------------------------- item 10: a logger without a folder


class MetricsOnlyLogger(Logger):
    """A user's logger that keeps metrics in memory: no log_dir, no save_dir, no image API."""

    name, version = "memory", 0

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[dict] = []

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append(dict(metrics))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def test_audit_pictures_of_a_logger_without_a_folder_go_to_the_root_dir_with_a_word(tmp_path):
    from test_audit import UserNet, loaders, quiet_trainer

    from diffcam_lightning import CAMAudit

    logger = MetricsOnlyLogger()
    assert getattr(logger, "log_dir", None) is None and getattr(logger, "save_dir", None) is None
    train, val = loaders(saliency=True)
    trainer = quiet_trainer(
        tmp_path / "root", logger=logger, callbacks=[CAMAudit(audit_size=6, grid_images=2)], max_epochs=1
    )
    with pytest.warns(UserWarning, match=r"MetricsOnlyLogger logger has neither log_dir nor save_dir.*root/cam_audit"):
        trainer.fit(UserNet(), train, val)
    assert [p.name for p in (tmp_path / "root" / "cam_audit").glob("*.png")] == ["epoch=0-step=3.png"]  # old: none
    assert any(k.startswith("cam_audit/") for m in logger.metrics for k in m)


# ---------------------------------------------------------------- item 11: a second explain run


def test_a_second_explain_into_the_same_folder_is_refused_or_replaces_the_first(tmp_path, capsys):
    from test_explain import QUIET

    from diffcam_lightning.cli import main

    for name, colour in (("red", (200, 0, 0)), ("blue", (0, 0, 200)), ("green", (0, 200, 0))):
        (tmp_path / name).mkdir()
        Image.new("RGB", (40, 30), colour).save(tmp_path / name / f"{name}.png")
    out = tmp_path / "out"

    def explain(folder: str, *extra: str) -> None:
        main(
            [
                "explain",
                "--output_dir",
                str(out),
                *QUIET,
                "--model",
                "timm:test_resnet",
                "--image_size",
                "64",
                "--methods",
                "gradcam",
                "--images",
                str(tmp_path / folder),
                *extra,
            ]
        )

    explain("red")
    with pytest.raises(SystemExit):
        explain("blue")
    err = capsys.readouterr().err
    assert "is not empty (images, maps, predictions.csv, report.md)" in err and "--overwrite" in err
    (out / "notes.txt").write_text("mine")  # a user's own file is not a previous run's output
    explain("green", "--overwrite")
    assert sorted(p.name for p in (out / "images").iterdir()) == ["00000_green.png"]  # old: 00000_red.png too
    assert sorted(p.name for p in (out / "maps").iterdir()) == ["00000_green.npz"]
    assert (out / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- review: folders a user brings


def _folder_dataset(root):
    from diffcam_lightning.data.files import (
        SaliencyImageDataset,
        folder_classes,
        scan_folder,
    )
    from diffcam_lightning.data.transforms import PairedTransform

    config = {
        "input_size": (3, 16, 16),
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
    }
    classes = folder_classes(root / "images")
    samples = scan_folder(root / "images", classes, root / "maps")
    return SaliencyImageDataset(samples, classes, PairedTransform(config))


def test_hidden_copies_inside_class_folders_are_not_extra_samples(tmp_path):
    from diffcam_lightning.explain.inputs import collect_images

    for folder in ("images/cat", "images/cat/.ipynb_checkpoints", "maps/cat"):
        (tmp_path / folder).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "images/cat/a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "images/cat/.ipynb_checkpoints/a-checkpoint.png")
    (tmp_path / "images/cat/._a.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    assert [s.image.name for s in _folder_dataset(tmp_path).samples] == ["a.png"]  # old: 3 samples, one unreadable
    assert [i.path.name for i in collect_images([str(tmp_path / "images")])] == ["a.png"]


def test_a_saliency_map_in_the_unrotated_orientation_of_an_exif_rotated_photo_is_refused(tmp_path):
    (tmp_path / "images/cat").mkdir(parents=True)
    (tmp_path / "maps/cat").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned: 20 x 40 on screen
    Image.new("RGB", (40, 20), (90, 90, 90)).save(tmp_path / "images/cat/phone.jpg", exif=exif)
    Image.new("L", (40, 20), 255).save(tmp_path / "maps/cat/phone.png")  # drawn on the raw 40 x 20 pixels
    with pytest.raises(DataError, match=r"phone\.png' is 40x20 px but its image .*phone\.jpg' is shown at 20x40"):
        _folder_dataset(tmp_path)[0]
    Image.new("L", (10, 20), 255).save(tmp_path / "maps/cat/phone.png")  # the viewer's orientation, half size
    assert _folder_dataset(tmp_path)[0]["saliency"].shape == (16, 16)
