"""TensorBoard in a real browser (issue 19): a short fit's log folder served by TensorBoard,
loaded in headless Chromium (Debian's ``chromium``, driven by ``playwright-core``; both
installed by ``.ci/run``). The Custom Scalars page shows one chart per audit family with one
line per method; the Images page shows the labelled grid at its full size. Screenshots go to
the test's folder, and to ``$DIFFCAM_SCREENSHOTS`` when set.

Skips, with the reason, only where no browser (or no node / playwright-core to drive it) exists.

    python tests/test_browser.py LOG_DIR OUT_DIR   # screenshots of any log folder (the README's)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "browser" / "tensorboard_pages.js"
NODE_MODULES = Path(os.environ.get("DIFFCAM_NODE_MODULES", ROOT / ".ci" / "node" / "node_modules"))


def chromium() -> str | None:
    found = os.environ.get("DIFFCAM_CHROMIUM")
    return found or next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def missing_browser() -> str | None:
    """Why the browser test cannot run here, or None."""
    if chromium() is None:
        return "no Chromium browser on PATH (apt-get install chromium; .ci/run installs it)"
    if shutil.which("node") is None:
        return "no node to drive Chromium (apt-get install nodejs)"
    if not (NODE_MODULES / "playwright-core").is_dir():
        return f"no playwright-core in {NODE_MODULES} (npm install --prefix .ci/node playwright-core; .ci/run does)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def tensorboard(log_dir: Path) -> Iterator[str]:
    """A TensorBoard server on ``log_dir`` for the block; yields its URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(log_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/data/plugins_listing", timeout=5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"TensorBoard did not start: {proc.communicate()[0][-2000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pages(log_dir: Path, out_dir: Path) -> dict:
    """What the browser shows of ``log_dir``'s TensorBoard; screenshots into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tensorboard(log_dir) as url:
        proc = subprocess.run(
            ["node", str(SCRIPT), url, str(chromium()), str(out_dir)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
        )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.usefixtures("one_thread")
def test_tensorboard_shows_the_audit_charts_and_the_labelled_grid(tmp_path):
    reason = missing_browser()
    if reason is not None:
        pytest.skip(reason)
    from test_tensorboard_review import METHODS, short_fit

    logger = short_fit(tmp_path / "logs")
    shown = pages(tmp_path / "logs", tmp_path / "shots")

    charts = {c["title"]: {s.rsplit(" (", 1)[0] for s in c["series"]} for c in shown["customScalars"]}
    assert next(iter(charts)) == "alarm"  # the verdict first
    for family in ("entropy", "sham_mse", "susceptibility", "dependence"):
        assert charts[family] == {f"cam_audit/{family}/{m}" for m in METHODS}, (family, charts)  # a line per method
    assert charts["drift"] == {"cam_audit/drift/meandiffgradcam", "cam_audit/drift/meandiffgradcam++"}
    assert {"cam_audit/alarm", "cam_audit/alarm/sham"} <= charts["alarm"]

    [grid] = [i for i in shown["images"] if "cam_audit/grid" in i["heading"]]
    # 2 rows x (input + saliency + 4 methods) cells of 96 px, padding 2, a 24 px title row, a 96 px label column
    assert (grid["width"], grid["height"]) == (96 + 6 * 98 + 2, 24 + 2 * 98 + 2), grid

    for name in ("custom_scalars.png", "images.png"):
        shot = tmp_path / "shots" / name
        assert shot.stat().st_size > 20_000, name  # a rendered page, not a blank
        if os.environ.get("DIFFCAM_SCREENSHOTS"):
            Path(os.environ["DIFFCAM_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(os.environ["DIFFCAM_SCREENSHOTS"]) / name)
    assert Path(logger.log_dir).is_dir()


if __name__ == "__main__":
    problem = missing_browser()
    if problem is not None:
        sys.exit(problem)
    print(json.dumps(pages(Path(sys.argv[1]), Path(sys.argv[2])), indent=1))
