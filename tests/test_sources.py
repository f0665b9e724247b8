"""The one resolver of model sources: every kind, clear errors, self-contained checkpoints."""

import lightning as L
import pytest
import torch
from torch import nn

from diffcam_lightning import SaliencyClassifier, SyntheticDataModule
from diffcam_lightning.models.sources import LoadedModel, load_model

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


class TinyNet(nn.Module):
    """A user's own network, built by class path."""

    def __init__(self, num_classes: int = 3, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def tiny_net(num_classes: int = 3) -> TinyNet:
    """A factory function, as torchvision's and timm's are."""
    return TinyNet(num_classes)


@pytest.mark.parametrize(
    "source, cls",
    [
        ("resnet10t", "ResNet"),
        ("timm:resnet10t", "ResNet"),
        ("torchvision:resnet18", "ResNet"),
        ("torchvision:squeezenet1_1", "SqueezeNet"),
        ("tests.test_sources.TinyNet", "TinyNet"),
        ("tests.test_sources.tiny_net", "TinyNet"),
    ],
)
def test_every_kind_builds_with_the_asked_class_count(source, cls):
    loaded = load_model(source, 5)
    assert isinstance(loaded, LoadedModel) and type(loaded.model).__name__ == cls
    assert loaded.num_classes == 5 and loaded.source == source
    assert loaded.model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_none_keeps_the_models_own_head_and_an_instance_is_used_as_is():
    assert load_model("torchvision:resnet18").num_classes == 1000
    net = TinyNet(4)
    loaded = load_model(net)
    assert loaded.model is net and loaded.num_classes == 4 and loaded.source.endswith("TinyNet")
    with pytest.raises(ValueError, match="has 4 classes, not 6"):
        load_model(net, 6)


def test_torchvision_weights_file_keeps_its_head(tmp_path):
    path = tmp_path / "vgg.pth"
    reference = load_model("torchvision:vgg11", 6).model
    torch.save(reference.state_dict(), path)
    again = load_model("torchvision:vgg11", weights=str(path)).model
    assert again.classifier[-1].out_features == 6
    assert torch.equal(again.features[0].weight, reference.features[0].weight)


@pytest.mark.parametrize(
    "source, error, message",
    [
        ("torchvision:resnet19", ValueError, r"Unknown torchvision model 'resnet19'.*resnet18.*list_models"),
        ("resnet5O", ValueError, r"Unknown model source 'resnet5O'.*resnet50.*torchvision:NAME.*checkpoint"),
        ("nosuchpkg.models.Net", ValueError, r"Cannot import 'nosuchpkg.models'.*nosuchpkg.models.Net"),
        ("tests.test_sources.TinyNett", ValueError, r"has no 'TinyNett'.*TinyNet"),
        ("missing/run.ckpt", FileNotFoundError, r"missing/run.ckpt"),
    ],
)
def test_bad_sources_name_the_value_and_the_valid_kinds(source, error, message):
    with pytest.raises(error, match=message):
        load_model(source, 5)


def test_a_class_without_num_classes_is_refused_when_the_count_differs():
    with pytest.raises(ValueError, match=r"built with 1000 classes, not the 5.*model_kwargs"):
        load_model("torchvision.models.resnet18", 5)
    assert load_model("torchvision.models.resnet18", 5, model_kwargs={"num_classes": 5}).num_classes == 5


def _fit(tmp_path, **model_kw) -> str:
    dm = SyntheticDataModule(
        image_size=64, train_size=32, val_size=16, test_size=16, batch_size=16, num_classes=4, preset="few"
    )
    torch.manual_seed(0)
    model = SaliencyClassifier(num_classes=dm.num_classes, class_names=dm.classes, sham_entropy=1.0, **model_kw)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        limit_train_batches=1,
        limit_val_batches=1,
    )
    trainer.fit(model, dm)
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


@pytest.mark.filterwarnings(
    "ignore:CAMEngine.*mix the images of a batch"
)  # training at layer3 of a BatchNorm net warns by design
def test_checkpoint_from_a_weights_file_loads_elsewhere_after_the_file_is_deleted(tmp_path, monkeypatch):
    weights = tmp_path / "start.pth"
    torch.save(load_model("resnet10t", 4).model.state_dict(), weights)
    ckpt = _fit(tmp_path / "run", model_name="resnet10t", weights_file=str(weights), target_layer="layer3")
    weights.unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    stored = torch.load(ckpt, weights_only=True)
    assert stored["hyper_parameters"]["weights_file"] is None
    assert stored["diffcam"]["initial_weights"] == str(weights)
    module = SaliencyClassifier.load_from_checkpoint(ckpt)  # Lightning's own path: no file read again
    loaded = load_model(ckpt)
    assert loaded.num_classes == 4 and loaded.target_layer == "layer3"
    assert loaded.class_names == SyntheticDataModule(num_classes=4, preset="few").classes
    assert loaded.hparams["model_name"] == "resnet10t"
    for a, b in zip(module.model.state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("source", ["torchvision:resnet18", "tests.test_sources.TinyNet"])
def test_checkpoint_of_a_torchvision_or_class_path_network_round_trips(tmp_path, source):
    ckpt = _fit(tmp_path, model_name=source, model_kwargs={"width": 4} if "TinyNet" in source else None)
    loaded = load_model(ckpt)
    module = SaliencyClassifier.load_from_checkpoint(ckpt)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded.model.eval()(x), module.model.eval()(x))


def test_a_network_instance_trains_and_its_checkpoint_rebuilds_it(tmp_path):
    ckpt = _fit(tmp_path, network=TinyNet(4))
    loaded = load_model(ckpt)
    assert isinstance(loaded.model, TinyNet) and loaded.num_classes == 4
