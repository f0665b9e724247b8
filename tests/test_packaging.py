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
