"""Every code block in README.md and docs/ that shows an output is run and its output checked
(issue 19), so the docs cannot drift from the code:

- ```pycon blocks are doctests (ELLIPSIS and NORMALIZE_WHITESPACE on); a page's blocks share
  one namespace, in order, like one session;
- ```console blocks are shell sessions: each ``$ `` line runs with this checkout on
  PYTHONPATH, in one empty folder per page (a page's blocks in order), and the lines up to
  the next ``$ `` are its expected output.

Other blocks (bash, python, yaml) show no output and are not run. Also: the README stays a
front door (<= 250 lines) and the site's home page is the README with the site's links.
"""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@dataclass
class Block:
    page: Path
    line: int
    language: str
    text: str


def blocks(page: Path, languages: tuple[str, ...]) -> list[Block]:
    text = page.read_text()
    return [
        Block(page, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2))
        for m in FENCE.finditer(text)
        if m.group(1) in languages
    ]


def _id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


PYCON_PAGES = [p for p in PAGES if blocks(p, ("pycon",))]
CONSOLE_BLOCKS = [b for p in PAGES for b in blocks(p, ("console",))]


def test_the_docs_have_checked_blocks():
    """The collection itself: a page whose blocks were silently skipped would test nothing."""
    assert len(PYCON_PAGES) >= 3 and len(CONSOLE_BLOCKS) >= 3


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("page", PYCON_PAGES, ids=_id)
def test_pycon_blocks(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    parser, checker = doctest.DocTestParser(), doctest.OutputChecker()
    runner = doctest.DocTestRunner(checker=checker, optionflags=OPTIONS)
    namespace: dict = {"__name__": "__docs__"}
    failures: list[str] = []
    for block in blocks(page, ("pycon",)):
        name = f"{_id(page)}:{block.line}"
        test = parser.get_doctest(block.text, namespace, name, str(page), block.line)
        out: list[str] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an example may show a warning; its output is what is checked
            runner.run(test, out=out.append, clear_globs=False)
        failures += out
    assert not failures, "\n".join(failures)


def _commands(block: Block) -> list[tuple[str, str]]:
    """``[(command, expected output)]`` of a console block."""
    pairs: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        elif pairs:
            pairs[-1][1].append(line)
        elif line.strip():
            raise AssertionError(f"{_id(block.page)}:{block.line}: output before the first '$ ' line")
    return [(cmd, "\n".join(lines).strip() + "\n") for cmd, lines in pairs]


CONSOLE_PAGES = sorted({b.page for b in CONSOLE_BLOCKS})


@pytest.mark.parametrize("page", CONSOLE_PAGES, ids=_id)
def test_console_blocks(page, tmp_path):
    """A page's console blocks run in order in one empty folder (a later block may read what
    an earlier one wrote)."""
    bin_dir = str(Path(sys.executable).parent)  # ``diffcam``: the console script beside this python
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "100",
    }
    checker = doctest.OutputChecker()
    for block in blocks(page, ("console",)):
        for command, expected in _commands(block):
            proc = subprocess.run(
                command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
            )
            got = proc.stdout + proc.stderr
            assert checker.check_output(expected, got, OPTIONS), (
                f"{_id(page)}:{block.line}: `{command}` (exit {proc.returncode})\nexpected:\n{expected}\ngot:\n{got}"
            )


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, len(lines)
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)", "\n".join(lines)))
    assert linked and all((ROOT / "docs" / name).exists() for name in linked)


def test_site_home_is_the_readme():
    """docs/index.md is README.md with the links made relative to docs/ (regenerate:
    ``sed 's#](docs/#](#g' README.md > docs/index.md``)."""
    readme = (ROOT / "README.md").read_text()
    assert (ROOT / "docs" / "index.md").read_text() == readme.replace("](docs/", "](")


# Docstring examples (issue 23): every ``>>>`` example in the package runs, and each public
# class a user constructs has one (Args/Attributes/Raises and an example, as Lightning's do).
MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts)
    for p in (ROOT / "diffcam_lightning").rglob("*.py")
    if p.name != "__main__.py"
)
EXAMPLE_MODULES = [m for m in MODULES if ">>>" in (ROOT / Path(*m.split("."))).with_suffix(".py").read_text()]
DOCUMENTED_CLASSES = [
    "diffcam_lightning.CAMEngine",
    "diffcam_lightning.CAMAudit",
    "diffcam_lightning.SaliencyClassifier",
    "diffcam_lightning.SyntheticDataModule",
    "diffcam_lightning.ImageFolderDataModule",
    "diffcam_lightning.CSVDataModule",
    "diffcam_lightning.audit.metrics.AuditScores",
    "diffcam_lightning.audit.signals.AuditMaps",
    "diffcam_lightning.registry.Registry",
]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("module", EXAMPLE_MODULES)
def test_docstring_examples(module, tmp_path, monkeypatch):
    import importlib

    monkeypatch.chdir(tmp_path)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    out: list[str] = []
    tests = [t for t in finder.find(importlib.import_module(module)) if t.examples]
    assert tests, f"{module} has '>>>' but no example the doctest finder sees"
    for test in tests:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runner.run(test, out=out.append)
    assert not out, "\n".join(out)


@pytest.mark.parametrize("qualified", DOCUMENTED_CLASSES)
def test_public_classes_are_documented(qualified):
    """Args, a runnable example, and Raises where the constructor refuses input."""
    import importlib
    import inspect

    module, _, name = qualified.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    doc = inspect.getdoc(cls) or ""
    assert ">>>" in doc, f"{qualified} has no >>> example"
    if len(inspect.signature(cls).parameters) > 1:
        assert "Args:" in doc, f"{qualified} documents no Args"
