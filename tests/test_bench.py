"""benchmarks/: the timing helpers and run_all's comparison with committed results (no timing
is asserted: the measured values are synthetic)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


common = _module("common")
run_all = _module("run_all")


def _stats(median):
    return {"median": median, "min": median, "max": median, "n": 1}


def _results(items):
    res = common.Results("b")
    for name, ours, peer in items:
        res.add(name, _stats(ours), None if peer is None else _stats(peer), "peer")
    for it in res.items:
        it["bench"] = "b"
    return {"machine": {"cpu": "x", "date": "2026-01-01T00:00:00+00:00"}, "items": res.items}


def test_measure_counts_and_orders():
    calls = []
    s = common.measure(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7 and s["n"] == 5
    assert s["min"] <= s["median"] <= s["max"]
    with pytest.raises(ValueError, match="repeats"):
        common.measure(lambda: None, repeats=0)


def test_ratio_and_scaling():
    res = common.Results("b")
    item = res.add("x", _stats(2.0), _stats(10.0), "peer")
    assert item["ratio"] == pytest.approx(5.0)
    assert res.add("y", _stats(1.0))["ratio"] is None
    per = common.scaled({"median": 4.0, "min": 2.0, "max": 8.0, "n": 3}, 4)
    assert per == {"median": 1.0, "min": 0.5, "max": 2.0, "n": 3}
    best = common.best_of_rounds([_stats(3.0), _stats(2.0)])
    assert best["median"] == 2.0 and best["n"] == 2


def test_compare_flags_a_ratio_slowdown_beyond_the_tolerance_only():
    old = _results([("a", 1.0, 10.0), ("b", 1.0, 10.0), ("c", 1.0, None), ("gone", 1.0, None)])
    # a: ratio 10 -> 6 (-40 %), b: ratio 10 -> 8 (-20 %), c: 2x slower without a peer
    new = _results([("a", 1.0, 6.0), ("b", 2.0, 16.0), ("c", 2.0, None), ("new", 1.0, None)])
    slow, notes = run_all.compare(old, new, tolerance=0.3)
    assert len(slow) == 1 and slow[0].startswith("SLOWER a:")
    assert any("absolute time" in n and "c:" in n for n in notes)
    assert any("new item" in n and "new" in n for n in notes)
    assert any("not measured" in n and "gone" in n for n in notes)
    # the machine twice as loaded slows hybridsim and the peer alike: no slowdown
    loaded = _results([("a", 2.0, 20.0), ("b", 2.0, 20.0)])
    assert run_all.compare(old, loaded, tolerance=0.3)[0] == []
    with pytest.raises(ValueError, match="tolerance"):
        run_all.compare(old, new, tolerance=1.5)


def test_compare_command_line(tmp_path):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(_results([("a", 1.0, 10.0)])))
    new.write_text(json.dumps(_results([("a", 1.0, 5.0)])))
    cmd = [sys.executable, str(BENCH / "run_all.py"), "--compare", str(new), "--against", str(old)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0 and "SLOWER a:" in out.stdout
    strict = subprocess.run([*cmd, "--strict"], capture_output=True, text=True)
    assert strict.returncode == 1
    missing = subprocess.run(
        [*cmd[:-1], str(tmp_path / "nope.json")], capture_output=True, text=True
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "nope.json" in missing.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    wrong = subprocess.run([*cmd[:3], str(bad)], capture_output=True, text=True)
    assert wrong.returncode == 2 and "not a benchmarks results file" in wrong.stderr


def test_committed_results_files_are_comparable():
    """Every committed results file loads and carries the machine and commit it came from."""
    files = sorted((BENCH / "results").glob("*.json"))
    for path in files:
        data = run_all.load(path)
        assert (
            data["machine"]["commit"]
            and data["machine"]["cpu"]
            and data["machine"]["versions"]["torch"]
        )
        assert all(i["ours"]["n"] >= 1 for i in data["items"])
