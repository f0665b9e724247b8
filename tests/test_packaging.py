"""Packaging: the declared dependencies let a user keep their own torch stack."""

import sys
from pathlib import Path

from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest depends on tomli below 3.11
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return {Requirement(line).name: Requirement(line) for line in project["dependencies"]}


def test_torch_and_torchvision_have_a_lower_bound_and_no_upper_pin():
    requirements = _requirements()
    for name in ("torch", "torchvision"):
        operators = {spec.operator for spec in requirements[name].specifier}
        assert operators == {">="}, f"{name}: {requirements[name]} (a user on a newer release would be downgraded)"
        # the release CI installs and every future one satisfy it
        assert requirements[name].specifier.contains({"torch": "2.14.1", "torchvision": "0.29.1"}[name])
        assert requirements[name].specifier.contains({"torch": "3.0", "torchvision": "1.0"}[name])


def test_the_torch_ci_installs_satisfies_the_declared_range():
    import torch
    import torchvision

    requirements = _requirements()
    for module in (torch, torchvision):
        release = module.__version__.split("+")[0]
        assert requirements[module.__name__].specifier.contains(release), (module.__name__, release)


# ---------------------------------------------------------------- the installed product (issue 19)
import pytest  # noqa: E402

from diffcam_lightning.cli import SUBCOMMANDS, main  # noqa: E402
from diffcam_lightning.errors import UserInputError  # noqa: E402
from diffcam_lightning.shipped import CONFIGS_DIR, copy_configs, resolve_config, shipped_configs  # noqa: E402

ROOT = PYPROJECT.parent


def test_help_lists_every_subcommand_with_a_line(capsys):
    main(["--help"])
    text = capsys.readouterr().out
    for name in ("fit", "validate", "test", "predict", "explain", "report", "configs"):
        line = next((ln for ln in text.splitlines() if ln.strip().startswith(name + " ")), None)
        assert line is not None and len(line.split()) > 2, (name, text)
    assert set(SUBCOMMANDS) == {"fit", "validate", "test", "predict", "explain", "report", "configs"}


def test_version(capsys):
    main(["--version"])
    assert capsys.readouterr().out.strip() == "diffcam-lightning 0.1.0"


def test_configs_are_package_data_in_one_place():
    names = shipped_configs()
    assert "synthetic_sham.yaml" in names and "callbacks/cam_audit.yaml" in names
    assert CONFIGS_DIR.parent.name == "diffcam_lightning"
    # one copy: a config added at the old top-level folders would not ship (`configs/x.yaml` on the
    # command line still finds the shipped file: test_config_names_resolve_from_any_folder)
    assert not (ROOT / "configs").exists() and not (ROOT / "callbacks").exists()
    package_data = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]["diffcam_lightning"]
    assert "py.typed" in package_data and (CONFIGS_DIR.parent / "py.typed").exists()


def test_config_names_resolve_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config("synthetic_sham.yaml") == str(CONFIGS_DIR / "synthetic_sham.yaml")
    assert resolve_config("configs/synthetic_sham.yaml") == str(CONFIGS_DIR / "synthetic_sham.yaml")
    assert resolve_config("callbacks/cam_audit.yaml") == str(CONFIGS_DIR / "callbacks" / "cam_audit.yaml")
    own = tmp_path / "synthetic_sham.yaml"  # a file of the user's own wins over the shipped one
    own.write_text("seed_everything: 1\n")
    assert resolve_config("synthetic_sham.yaml") == "synthetic_sham.yaml"
    with pytest.raises(UserInputError, match=r"--config nope\.yaml: .*shipped: .*synthetic_sham\.yaml"):
        resolve_config("nope.yaml")


def test_configs_copy_writes_editable_copies_and_refuses_to_overwrite(tmp_path, capsys):
    main(["configs", "--copy", str(tmp_path / "mine")])
    written = sorted(p.relative_to(tmp_path / "mine").as_posix() for p in (tmp_path / "mine").rglob("*.yaml"))
    assert written == shipped_configs()
    assert (tmp_path / "mine" / "synthetic_sham.yaml").read_text() == (CONFIGS_DIR / "synthetic_sham.yaml").read_text()
    assert str(tmp_path / "mine" / "callbacks" / "cam_audit.yaml") in capsys.readouterr().out
    (tmp_path / "mine" / "synthetic_sham.yaml").write_text("edited")
    with pytest.raises(UserInputError, match="already exist; pass --force"):
        copy_configs(tmp_path / "mine")
    assert (tmp_path / "mine" / "synthetic_sham.yaml").read_text() == "edited"  # nothing overwritten
    copy_configs(tmp_path / "mine", force=True)
    assert (tmp_path / "mine" / "synthetic_sham.yaml").read_text() != "edited"


def test_fit_reads_a_shipped_config_by_name_in_an_empty_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["diffcam"])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "resnet50_sham.yaml", "--config", "callbacks/cam_audit.yaml", "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "resnet50" in printed and printed.count("diffcam_lightning.audit.CAMAudit") == 1
