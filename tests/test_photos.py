"""The shipped photographs, their seeded views, and a report over index-labelled views."""

from __future__ import annotations

import csv

import pytest
from PIL import Image

from diffcam_lightning.data.photos import PHOTOS, load_photo, sample_views, write_views
from diffcam_lightning.report.data import DataSpec, build_report_data


def test_every_photo_loads_as_rgb_and_views_are_seeded():
    for name in PHOTOS:
        image = load_photo(name)
        assert image.mode == "RGB" and min(image.size) >= 150, name
    views = sample_views(list(PHOTOS), per_photo=3, seed=0)
    assert len(views) == 3 * len(PHOTOS) >= 60  # RQ2 needs >= 60 images from what ships offline
    assert views == sample_views(list(PHOTOS), per_photo=3, seed=0) != sample_views(list(PHOTOS), per_photo=3, seed=1)
    assert views[0].box == (0.0, 0.0, 1.0, 1.0) and not views[0].flip and views[0].scale == 1.0
    for view in views:
        left, top, right, bottom = view.box
        assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1 and 0.5 <= view.scale <= 1.5


def test_views_manifest_feeds_a_1000_class_report(tmp_path):
    views = sample_views(["chelsea", "coffee"], per_photo=2, seed=0)
    manifest = write_views(tmp_path, views, labels={"chelsea": 282, "coffee": 967})
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["282", "282", "967", "967"]
    with Image.open(tmp_path / rows[1]["image"]) as view:
        assert view.size != load_photo("chelsea").size  # a crop, rescaled
    spec = DataSpec(source="csv", root=str(manifest), samples_per_class=10, label_classes=1000)
    data = build_report_data(spec, "tf_efficientnet_lite0")
    assert data.num_classes == 1000 and len(data.dataset) == 4 and int(data.dataset[2]["label"]) == 967
    assert build_report_data(DataSpec(source="csv", root=str(manifest), samples_per_class=10), None).num_classes == 968
    with pytest.raises(ValueError, match="label_classes=100 needs integer labels 0..99"):
        build_report_data(DataSpec(source="csv", root=str(manifest), label_classes=100), None)
