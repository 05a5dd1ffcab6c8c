"""The model ceiling tool (python -m detops.bench.model_ceiling): the layer
share comes from the profiler's torch layer ops, and the writer makes a JSON
and a text table. No timing is asserted."""

from __future__ import annotations

import json

import torch

from detops.bench import model_ceiling


def _net():
    conv, linear = torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 4)
    x = torch.rand(2, 3, 16, 16)

    def layers_and_more():
        with torch.no_grad():
            y = torch.relu(conv(x)).mean((2, 3))
            out = linear(y)
            for _ in range(20):  # work that is not a layer
                out = out.sort(dim=1)[0] + 1
            return out

    return layers_and_more


def test_layer_share_counts_layers_only():
    layers, total = model_ceiling.layer_ms(_net(), "cpu")
    assert 0 < layers < total


def test_main_writes_rows(tmp_path, monkeypatch):
    fn = _net()
    monkeypatch.setattr(model_ceiling, "cases", lambda device, side: iter([("toy", "after backbone", fn, fn)]))
    assert model_ceiling.main(["--device", "cpu", "--repeats", "1", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "model-ceiling-cpu.json").read_text())
    (row,) = record["rows"]
    assert row["model"] == "toy" and 0 < row["layers_fraction_of_torchvision"] < 1
    assert abs(row["ceiling"] * row["layers_fraction_of_torchvision"] - 1) < 1e-9
    assert "toy" in (tmp_path / "model-ceiling-cpu.txt").read_text()
