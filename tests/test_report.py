"""``diffcam report``: the chain train -> SHAM fine-tune -> report on synthetic data,
table values recomputed independently, folder input, DDP parity and bad input."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ranksums, wilcoxon

from diffcam_lightning import CAMEngine, SaliencyClassifier, SyntheticDataModule
from diffcam_lightning.report import (
    ArchitectureSpec,
    DataSpec,
    FaithfulnessSpec,
    ModelSource,
    ReportOptions,
    TimingSpec,
    run_report,
)
from diffcam_lightning.report.cli import main as report_main
from diffcam_lightning.report.sources import load_model
from diffcam_lightning.report.stats import format_p

TINY = {"model_name": "test_resnet", "model_kwargs": {"output_stride": 8}}
QUIET = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False}
NO_TIMING = TimingSpec(enabled=False)


def fit(tmp: Path, name: str, epochs: int, **model_args) -> Path:
    pl.seed_everything(0)
    model = SaliencyClassifier(**TINY, **model_args)
    data = SyntheticDataModule(image_size=48, train_size=224, val_size=28, test_size=28, batch_size=32)
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, **QUIET)
    trainer.fit(model, data)
    path = tmp / f"{name}.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Clean CE training, then SHAM fine-tuning from it, then the report."""
    tmp = tmp_path_factory.mktemp("chain")
    clean = fit(tmp, "clean", epochs=2, saliency_weight=0.0)
    # fine-tune as configs/synthetic_sham_finetune.yaml does: weights_file = the clean checkpoint
    sham = fit(tmp, "sham", epochs=2, weights_file=str(clean), saliency_target="sham", saliency_weight=1.0)
    options = ReportOptions(
        models=[
            ArchitectureSpec(
                clean=ModelSource(checkpoint=str(clean)), sham=ModelSource(checkpoint=str(sham)), name="tiny"
            )
        ],
        output_dir=str(tmp / "report"),
        data=DataSpec(samples_per_class=3, image_size=48, batch_size=8),
        figure_samples=2,
        timing=TimingSpec(runs=3, discard=1),
    )
    written = run_report(options, QUIET)
    return tmp, options, written


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_chain_writes_every_output(chain):
    tmp, _, _ = chain
    out = tmp / "report"
    for name in ("table3_similarity", "table4_susceptibility", "accuracy", "table1_runtime_tiny"):
        for ext in ("csv", "md", "tex"):
            assert (out / "tables" / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext}"
    assert (out / "figures" / "tiny_clean.png").stat().st_size > 1000
    assert (out / "figures" / "tiny_sham.png").stat().st_size > 1000
    assert "table4_susceptibility" in (out / "report.md").read_text()
    rows = read_csv(out / "scores.csv")
    samples = {int(r["sample"]) for r in rows}
    assert samples == set(range(21))  # 3 per class x 7 classes, each once
    methods = {r["method"] for r in rows if r["metric"] == "susceptibility"}
    assert len(methods) == 12  # all methods, ScoreCAM included
    timing = read_csv(out / "tables" / "table1_runtime_tiny.csv")
    assert [r["method"] for r in timing][:2] == ["gradcam", "gradcam++"] and "pytorch-grad-cam (ms)" in timing[0]
    latex = (out / "tables" / "table3_similarity.tex").read_text()
    assert r"\begin{tabular}" in latex and r"$\pm$" in latex


def test_finetune_starts_from_the_clean_checkpoint(chain):
    tmp, _, _ = chain
    clean = load_model(ModelSource(checkpoint=str(tmp / "clean.ckpt")), 7)
    start = SaliencyClassifier(**TINY, weights_file=str(tmp / "clean.ckpt")).model
    for (name, a), b in zip(clean.state_dict().items(), start.state_dict().values()):
        assert torch.equal(a, b), name


def test_scores_recomputed_independently(chain):
    tmp, options, _ = chain
    rows = read_csv(tmp / "report" / "scores.csv")
    clean = load_model(options.models[0].clean, 7)
    sham = load_model(options.models[0].sham, 7)
    from diffcam_lightning.report.data import build_report_data

    data = build_report_data(options.data, "test_resnet").dataset
    for i in (0, 5, 13):
        item = data[i]
        x, label = item["image"][None], int(item["label"])
        methods = ("gradcam", "meandiffgradcam", "lsediffgradcam++", "gradcam++")
        a = CAMEngine(clean)(x, targets=[label], methods=methods, size="input")
        b = CAMEngine(sham)(x, targets=[label], methods=methods, size="input")

        def mse(p, q):
            norm = lambda m: (m - m.min()) / (m.max() - m.min() + 1e-7)
            return float(((norm(p) - norm(q)) ** 2).mean())

        def stored(metric, method, i=i):
            (row,) = [r for r in rows if int(r["sample"]) == i and r["metric"] == metric and r["method"] == method]
            return float(row["score"])

        assert stored("similarity", "meandiffgradcam") == pytest.approx(
            mse(a["meandiffgradcam"], a["gradcam"]), abs=1e-5
        )
        assert stored("similarity", "lsediffgradcam++") == pytest.approx(
            mse(a["lsediffgradcam++"], a["gradcam++"]), abs=1e-5
        )
        assert stored("susceptibility", "gradcam") == pytest.approx(mse(a["gradcam"], b["gradcam"]), abs=1e-5)


def test_p_values_equal_ranksums_on_saved_scores(chain):
    tmp, _, _ = chain
    rows = read_csv(tmp / "report" / "scores.csv")
    scores = lambda metric, m: [float(r["score"]) for r in rows if r["metric"] == metric and r["method"] == m]
    (table,) = read_csv(tmp / "report" / "tables" / "table3_similarity.csv")
    expected = ranksums(scores("similarity", "meandiffgradcam"), scores("similarity", "lsediffgradcam")).pvalue
    assert float(table["p(meandiffgradcam vs lsediffgradcam)"]) == pytest.approx(expected, rel=1e-3)
    suscept = read_csv(tmp / "report" / "tables" / "table4_susceptibility.csv")
    best = next(r["method"] for r in suscept if r["p (tiny)"] == "best")
    other = next(r for r in suscept if r["p (tiny)"] != "best")
    expected = ranksums(scores("susceptibility", best), scores("susceptibility", other["method"])).pvalue
    assert float(other["p (tiny)"]) == pytest.approx(expected, rel=1e-3)
    means = {r["method"]: float(r["tiny"].split(" ± ")[0]) for r in suscept}
    assert min(means, key=means.get) == best


def test_signed_rank_p_values_equal_wilcoxon_on_saved_scores(chain):
    """Paired scores (the same images under two methods): Tables 3 and 4 carry the
    signed-rank p-value, equal to scipy.stats.wilcoxon on scores.csv paired by sample."""
    tmp, _, _ = chain
    rows = read_csv(tmp / "report" / "scores.csv")

    def scores(metric, method):
        picked = sorted(
            (int(r["sample"]), float(r["score"])) for r in rows if r["metric"] == metric and r["method"] == method
        )
        return [score for _, score in picked]

    (table,) = read_csv(tmp / "report" / "tables" / "table3_similarity.csv")
    for fam in ("diffgradcam", "diffgradcam++"):
        a, b = scores("similarity", f"mean{fam}"), scores("similarity", f"max{fam}")
        cell = table[f"p signed-rank(mean{fam} vs max{fam})"]
        assert float(cell) == pytest.approx(wilcoxon(a, b).pvalue, rel=1e-3)
        assert float(table[f"p(mean{fam} vs max{fam})"]) == pytest.approx(ranksums(a, b).pvalue, rel=1e-3)
    suscept = read_csv(tmp / "report" / "tables" / "table4_susceptibility.csv")
    best = next(r["method"] for r in suscept if r["p signed-rank (tiny)"] == "best")
    others = [r for r in suscept if r["p signed-rank (tiny)"] != "best"]
    assert others
    for other in others:
        expected = wilcoxon(scores("susceptibility", best), scores("susceptibility", other["method"])).pvalue
        assert float(other["p signed-rank (tiny)"]) == pytest.approx(expected, rel=1e-3)


def write_jpeg_folder(root: Path, classes: int, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"img_{i}.jpg")
    return root


def test_imagenet_style_folder_with_a_timm_model_through_the_cli(tmp_path):
    root = write_jpeg_folder(tmp_path / "val", classes=3, per_class=3)
    out = tmp_path / "out"
    written = report_main(
        [
            "--report.models=[{clean: {arch: resnet10t}, sham: {arch: resnet10t}}]",
            f"--report.output_dir={out}",
            "--report.data.source=folder",
            f"--report.data.root={root}",
            "--report.data.samples_per_class=2",
            "--report.data.image_size=64",
            "--report.scorecam=false",
            "--report.timing.enabled=false",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
        ]
    )
    rows = read_csv(out / "scores.csv")
    assert {int(r["sample"]) for r in rows} == {0, 1, 3, 4, 6, 7}  # first 2 of each class
    assert (out / "tables" / "table4_susceptibility.md").exists() and "report" in written
    # no human saliency in an ImageNet folder: the clean figure omits the target column
    assert (out / "figures" / "resnet10t_clean.png").exists()


def _ddp_options(out: Path) -> ReportOptions:
    return ReportOptions(
        models=[ArchitectureSpec(clean=ModelSource("resnet10t"), name="r10")],
        output_dir=str(out),
        data=DataSpec(samples_per_class=1, image_size=48, batch_size=2),
        scorecam=False,
        figure_samples=0,
        timing=NO_TIMING,
        faithfulness=FaithfulnessSpec(steps=4),
    )


def test_ddp_spawn_two_processes_give_the_same_scores(tmp_path, monkeypatch):
    # float32 convolutions round differently with another thread count (measured: 3e-5 on
    # a deletion AUC). Lightning gives each spawned rank cpu_count // 2 threads unless
    # OMP_NUM_THREADS is set, while this process keeps its own count: pin both to one
    # thread, so the comparison holds whatever the environment (CI sets no OMP_NUM_THREADS).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # read by Lightning and by each spawned rank
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _ddp_and_single_scores_match(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _ddp_and_single_scores_match(tmp_path: Path) -> None:
    weights = {}
    for kind, seed in (("clean", 0), ("sham", 1)):
        torch.manual_seed(seed)
        weights[kind] = tmp_path / f"{kind}.pth"
        torch.save(load_model(ModelSource("resnet10t"), 7).state_dict(), weights[kind])
    results = {}
    # ddp first, then one process in the SAME folder: rank1's old file must not leak in
    for name, extra in (("ddp", {"devices": 2, "strategy": "ddp_spawn"}), ("single", {"devices": 1})):
        options = _ddp_options(tmp_path / "out")
        options.models[0].clean = ModelSource("resnet10t", weights=str(weights["clean"]))
        options.models[0].sham = ModelSource("resnet10t", weights=str(weights["sham"]))
        run_report(options, {**QUIET, **extra})
        results[name] = read_csv(tmp_path / "out" / "scores.csv")
        ranks = len(list((tmp_path / "out" / "scores").glob("r10.rank*.csv")))
        assert ranks == extra["devices"]  # every rank wrote, stale files were removed
    faithfulness = {f"{m}_{k}" for m in ("deletion", "insertion") for k in ("clean", "sham")}
    assert {r["metric"] for r in results["ddp"]} == {
        "similarity",
        "susceptibility",
        "correct_clean",
        "correct_sham",
        *faithfulness,
    }
    assert len(results["ddp"]) == len(results["single"]) == 7 * (2 + 6 + 11 + 4 * 6)
    for a, b in zip(results["single"], results["ddp"]):
        assert (a["sample"], a["metric"], a["method"]) == (b["sample"], b["metric"], b["method"])
        assert math.isclose(float(a["score"]), float(b["score"]), abs_tol=1e-5)


def test_missing_samples_are_an_error(tmp_path):
    from diffcam_lightning.report.scoring import FIELDS, merge_rank_files

    (tmp_path / "a.rank0.csv").write_text(",".join(FIELDS) + "\n0,0,0,similarity,meandiffgradcam,0.1\n")
    with pytest.raises(RuntimeError, match="1 of 2 samples have no scores.*shared by all nodes"):
        merge_rank_files(tmp_path, "a", expected=[0, 1])


def test_duplicate_labels_are_refused(tmp_path):
    options = _ddp_options(tmp_path)
    options.models = [
        ArchitectureSpec(clean=ModelSource("resnet10t")),
        ArchitectureSpec(clean=ModelSource("resnet10t")),
    ]
    with pytest.raises(ValueError, match="share the label 'resnet10t'.*name:"):
        run_report(options, QUIET)


# ------------------------------------------------------------------ bad input


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        ModelSource(checkpoint=str(tmp_path / "nope.ckpt"))


def test_checkpoint_of_another_architecture(tmp_path):
    path = tmp_path / "r10.ckpt"
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in load_model(ModelSource("resnet10t"), 7).state_dict().items()}}, path
    )
    with pytest.raises(ValueError, match=r"r10\.ckpt is not a test_resnet checkpoint.*another architecture"):
        load_model(ModelSource("test_resnet", checkpoint=str(path)), 7)


def test_checkpoint_class_count_mismatch(chain):
    _, options, _ = chain
    with pytest.raises(ValueError, match=r"clean\.ckpt.*class count"):
        load_model(options.models[0].clean, 10)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    options = _ddp_options(tmp_path / "out")
    options.data = DataSpec(source="folder", root=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="empty.*no class sub-folders"):
        run_report(options, QUIET)


def test_pretrained_head_class_count_mismatch(tmp_path):
    torch.save(load_model(ModelSource("resnet10t"), 5).state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"w\.pth has 5 classes but the data has 7"):
        load_model(ModelSource("resnet10t", weights=str(tmp_path / "w.pth")), 7)


def test_faithfulness_table_from_the_metrics_module(chain):
    """The report's deletion/insertion rows equal the metrics module on the same image and
    model, and the table holds clean and SHAM-tuned means for each default method."""
    from diffcam_lightning.cams import metrics as cam_metrics
    from diffcam_lightning.report.data import build_report_data

    tmp, options, _ = chain
    assert "table_faithfulness" in (tmp / "report" / "report.md").read_text()
    rows = read_csv(tmp / "report" / "scores.csv")
    data = build_report_data(options.data, "test_resnet").dataset
    for kind, source in (("clean", options.models[0].clean), ("sham", options.models[0].sham)):
        model = load_model(source, 7)
        batch = [data[i] for i in range(options.data.batch_size)]  # the report's first batch, as it ran
        x = torch.stack([item["image"] for item in batch])
        labels = torch.stack([item["label"] for item in batch])
        maps = CAMEngine(model)(x, targets=labels, methods="maxdiffgradcam", size="input")["maxdiffgradcam"]
        direct = cam_metrics.deletion_insertion(model, x, maps, labels, steps=options.faithfulness.steps)
        for i in (0, 5):
            index = int(batch[i]["index"]) if "index" in batch[i] else i
            for metric in ("deletion", "insertion"):
                (row,) = [
                    r
                    for r in rows
                    if int(r["sample"]) == index
                    and r["metric"] == f"{metric}_{kind}"
                    and r["method"] == "maxdiffgradcam"
                ]
                assert float(row["score"]) == pytest.approx(direct[metric][i].item(), abs=1e-5)
    table = read_csv(tmp / "report" / "tables" / "table_faithfulness.csv")
    assert [r["method"] for r in table] == [
        "gradcam",
        "gradcam++",
        "meandiffgradcam",
        "maxdiffgradcam",
        "lsediffgradcam",
        "eigencam",
    ]
    for r in table:
        assert " ± " in r["deletion clean (lower = better)"] and " ± " in r["insertion SHAM-tuned"]


def test_faithfulness_options_are_checked(tmp_path):
    from diffcam_lightning.report import FaithfulnessSpec

    with pytest.raises(ValueError, match=r"Unknown CAM metric 'aopc'"):
        FaithfulnessSpec(metrics=["aopc"]).resolved(["gradcam"])
    with pytest.raises(ValueError, match=r"need masks"):
        FaithfulnessSpec(metrics=["relevance_mass"]).resolved(["gradcam"])
    with pytest.raises(ValueError, match=r"\['layercam'\] are not among the report's methods"):
        FaithfulnessSpec(methods=["layercam"]).resolved(["gradcam"])


def test_faithfulness_table_leaves_out_nan_scores_and_counts_them():
    """A non-finite map scores NaN (cams.metrics): the table's means and the paired test
    use the finite scores and say how many were left out (issue 21, item 4)."""
    from diffcam_lightning.report.faithfulness import faithfulness_table

    clean = np.array([0.1, 0.2, np.nan, 0.4, 0.3])
    sham = np.array([0.5, 0.6, 0.7, np.nan, 0.9])
    scores = {("net", "deletion_clean", "gradcam"): clean, ("net", "deletion_sham", "gradcam"): sham}
    (row,) = faithfulness_table(scores, ["deletion"], ["gradcam"]).rows
    assert row[2].startswith("0.25 ± ") and row[2].endswith("(1 non-finite left out)")
    assert row[3].startswith("0.675 ± ") and row[3].endswith("(1 non-finite left out)")
    expected = wilcoxon([0.1, 0.2, 0.3], [0.5, 0.6, 0.9]).pvalue
    assert row[4] == format_p(float(expected))


# ------------------------------------------------------------------ what a checkpoint states (issue 11, item 3)


@pytest.mark.filterwarnings(
    "ignore:CAMEngine.*mix the images of a batch"
)  # training at layer3 of a BatchNorm net warns by design
def test_a_checkpoint_trained_at_a_non_default_layer_is_scored_at_that_layer(tmp_path):
    ckpt = fit(
        tmp_path, "l3", epochs=1, target_layer="layer3", saliency_target="sham", sham_entropy=2.5, sham_pattern="corner"
    )
    options = ReportOptions(
        models=[ArchitectureSpec(clean=ModelSource(checkpoint=str(ckpt)), name="l3")],
        output_dir=str(tmp_path / "report"),
        data=DataSpec(samples_per_class=1, image_size=48, batch_size=8),
        methods=["gradcam", "meandiffgradcam", "maxdiffgradcam"],
        scorecam=False,
        figure_samples=0,
        timing=NO_TIMING,
    )
    run_report(options, QUIET)
    rows = read_csv(tmp_path / "report" / "scores.csv")
    model = load_model(options.models[0].clean, 7)
    from diffcam_lightning.report.data import build_report_data
    from diffcam_lightning.saliency import cam_mse

    item = build_report_data(options.data, "test_resnet").dataset[2]  # sample 0's layer-3 maps are all zero
    x, label = item["image"][None], int(item["label"])

    def similarity(layer):
        maps = CAMEngine(model, layer)(x, targets=[label], methods=("gradcam", "maxdiffgradcam"), size="input")
        return float(cam_mse(maps["maxdiffgradcam"], maps["gradcam"]))

    (row,) = [
        r for r in rows if int(r["sample"]) == 2 and r["method"] == "maxdiffgradcam" and r["metric"] == "similarity"
    ]
    assert float(row["score"]) > 1e-3 and float(row["score"]) == pytest.approx(similarity("layer3"), abs=1e-6)
    assert abs(similarity("layer3") - similarity("layer4")) > 1e-3  # the layer matters for this score

    from diffcam_lightning.report.sources import resolve

    stated = resolve(ModelSource(checkpoint=str(ckpt)), 7)
    assert (stated.target_layer, stated.sham_entropy, stated.sham_pattern) == ("layer3", 2.5, "corner")
    overridden = resolve(ModelSource(checkpoint=str(ckpt), target_layer="layer4", sham_pattern="border"), 7)
    assert (overridden.target_layer, overridden.sham_entropy, overridden.sham_pattern) == ("layer4", 2.5, "border")
