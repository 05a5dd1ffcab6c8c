"""The demo's pipeline with detops' ops gives torchvision's losses and
detections, and detops.eval's stats equal pycocotools' on them."""

import pytest

from detops import demo


def test_demo_pipeline_matches_torchvision(tmp_path):
    pytest.importorskip("matplotlib")
    assert demo.main(["--out", str(tmp_path), "--repeats", "1"]) == 0
    assert (tmp_path / "demo.png").stat().st_size > 10_000
