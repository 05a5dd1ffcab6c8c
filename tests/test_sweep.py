"""The size sweep (python -m detops.bench --sweep): every benchmarked op has a
ladder, the timer alternates and stops on its budget, and the writer makes a
JSON and a PNG. No timing is asserted."""

from __future__ import annotations

import json

from detops.bench import __main__ as bench_main
from detops.bench import sweep


def test_every_benchmarked_op_has_a_ladder():
    ops = [op for op in bench_main.discover_ops() if op not in sweep.MODEL_BENCHES]
    assert sorted(sweep.SWEEPS) == ops


def test_time_pair_budget_and_single_call_cap():
    calls = {"a": 0, "b": 0}

    def a():
        calls["a"] += 1

    def b():
        calls["b"] += 1

    ours, ref = sweep.time_pair(a, b, "cpu", budget=0.0, sample_time=1e-4, min_samples=3)
    assert len(ours) == len(ref) == 3 and calls["a"] > 3 and calls["b"] > 3
    ours, ref = sweep.time_pair(a, b, "cpu", budget=0.0, sample_time=1e-4, max_call=0.0)
    assert len(ours) == len(ref) == 1


def test_small_family_writes_json_and_png(tmp_path, monkeypatch):
    def tiny(device):
        cases = list(sweep.sweep_box_coder(device))
        return [c for c in cases if c.params["x"] <= 64]

    monkeypatch.setitem(sweep.SWEEPS, "box_coder", tiny)
    env = bench_main.environment("cpu")
    assert sweep.run_sweep("cpu", ["box_coder"], tmp_path, 0.0, env) == 0
    data = json.loads((tmp_path / "sweep-cpu.json").read_text())
    rows = data["results"]
    assert {r["size"] for r in rows} == {"4 boxes", "64 boxes"}
    assert all(r["speedup"] > 0 and r["series"] and r["x"] > 0 for r in rows)
    assert (tmp_path / "sweep-cpu.png").stat().st_size > 0
    assert not (tmp_path / "sweep-cpu.partial.json").exists()
