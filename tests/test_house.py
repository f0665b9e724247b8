"""The house rules of issue 23, read from the source so a change that breaks one fails here:
short functions, one registry type, no private names imported across packages, hooks marked
``@override``, no attribute probing for what another object set."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from diffcam_lightning.registry import Registry

PACKAGE = Path(__file__).resolve().parents[1] / "diffcam_lightning"
SOURCES = sorted(PACKAGE.rglob("*.py"))
MAX_FUNCTION_LINES = 60
REGISTRIES = [
    "diffcam_lightning.cams.methods.registry:METHOD_REGISTRY",
    "diffcam_lightning.cams.targets:BACKPROP_TARGETS",
    "diffcam_lightning.cams.coupling:BATCH_COUPLED",
    "diffcam_lightning.cams.metrics.registry:METRICS",
    "diffcam_lightning.cams.metrics.registry:GROUPS",
    "diffcam_lightning.cams.metrics.registry:MASK_METRICS",
    "diffcam_lightning.saliency.sham:SHAM_PATTERNS",
    "diffcam_lightning.saliency.sham:SHAM_FILLERS",
    "diffcam_lightning.models.classifier:SALIENCY_TARGETS",
    "diffcam_lightning.data.shapes:SHAPES",
    "diffcam_lightning.audit.sinks:GRID_WRITERS",
    "diffcam_lightning.audit.alarm:ALARM_RULES",
    "diffcam_lightning.audit.metrics:SCORE_FAMILIES",
    "diffcam_lightning.models.sources:BUILDERS",
]


def _relative(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def _trees() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text())) for p in SOURCES]


def test_no_function_is_longer_than_sixty_lines():
    long = [
        f"{_relative(path)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path, tree in _trees()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and (node.end_lineno or node.lineno) - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, "\n".join(long)


@pytest.mark.parametrize("where", REGISTRIES)
def test_every_registry_is_a_registry(where):
    module, _, name = where.partition(":")
    table = getattr(importlib.import_module(module), name)
    assert isinstance(table, Registry), f"{where} is a {type(table).__name__}"
    assert not hasattr(table, "__setitem__"), "a registry is changed only through register()"


def test_registries_refuse_a_taken_name():
    from diffcam_lightning.cams.targets import BACKPROP_TARGETS

    with pytest.raises(ValueError, match="already registered"):
        BACKPROP_TARGETS.register("logit", BACKPROP_TARGETS["logit"])


def _top_package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_private_name_is_imported_across_packages():
    """``from ..outputs import _logits`` reaches into another module's internals; a name
    that other modules need is public (third-party privates such as torch's ``_BatchNorm``
    are the documented way to type-check those modules and are not counted)."""
    found = []
    for path, tree in _trees():
        here = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.walk(tree):
            ours = isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").startswith("diffcam_lightning")
            )
            if ours:
                assert isinstance(node, ast.ImportFrom)
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    found.append(f"{_relative(path)}:{node.lineno} imports {', '.join(private)} ({here})")
    assert not found, "\n".join(found)


def test_no_getattr_probe_with_a_default_on_a_module_argument():
    """``getattr(pl_module, "x", default)``: an attribute another object set, probed instead
    of passed through a constructor (STYLE item 10)."""
    found = [
        f"{_relative(path)}:{node.lineno}"
        for path, tree in _trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "getattr"
        and len(node.args) == 3
        and isinstance(node.args[0], ast.Name)
        and node.args[0].id == "pl_module"
    ]
    assert not found, "\n".join(found)


LIGHTNING_HOOKS = {
    "on_fit_start",
    "on_train_epoch_end",
    "on_validation_epoch_end",
    "on_validation_end",
    "training_step",
    "validation_step",
    "test_step",
    "predict_step",
    "configure_optimizers",
    "setup",
    "state_dict",
    "load_state_dict",
    "write_on_batch_end",
    "train_dataloader",
    "val_dataloader",
    "test_dataloader",
    "predict_dataloader",
}


def test_lightning_hooks_carry_override():
    """Methods of Lightning subclasses that override a hook say so (a renamed hook upstream
    then fails the type check instead of silently never being called)."""
    missing = []
    for path, tree in _trees():
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            bases = {ast.unparse(b) for b in cls.bases}
            if not any(b.endswith(("Callback", "LightningModule", "LightningDataModule", "Writer")) for b in bases):
                continue
            for fn in cls.body:
                if isinstance(fn, ast.FunctionDef) and fn.name in LIGHTNING_HOOKS:
                    if not any(ast.unparse(d) in ("override", "typing_extensions.override") for d in fn.decorator_list):
                        missing.append(f"{_relative(path)}:{fn.lineno} {cls.name}.{fn.name}")
    assert not missing, "\n".join(missing)
