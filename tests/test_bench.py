"""benchmarks/: the timing helpers and run_all's comparison with committed results (no timing
is asserted: the measured values are synthetic)."""

from __future__ import annotations

import importlib.util
import json
import os
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


def test_interleaved_measurement_alternates_calls():
    order = []
    stats = common.measure_interleaved(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3, warmup=1
    )
    assert order == ["a", "b"] + ["a", "b"] * 3
    assert stats["a"]["n"] == stats["b"]["n"] == 3


def test_interleaved_blocks_run_back_to_back_after_one_untimed_call():
    order = []
    stats = common.measure_interleaved(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")},
        repeats=2,
        warmup=1,
        block=3,
    )
    turn = ["a"] * 4 + ["b"] * 4  # one untimed call, then three timed ones, per turn
    assert order == ["a", "b"] + turn * 2
    assert stats["a"]["n"] == stats["b"]["n"] == 6
    with pytest.raises(ValueError, match="block"):
        common.measure_interleaved({"a": lambda: None}, repeats=1, block=0)


def test_compare_flags_a_ratio_slowdown_beyond_the_tolerance_only():
    old = _results([("a", 1.0, 10.0), ("b", 1.0, 10.0), ("c", 1.0, None), ("gone", 1.0, None)])
    # a: ratio 10 -> 6 (-40 %), b: ratio 10 -> 8 (-20 %), c: 2x slower without a peer
    new = _results([("a", 1.0, 6.0), ("b", 2.0, 16.0), ("c", 2.0, None), ("new", 1.0, None)])
    slow, notes = run_all.compare(old, new, tolerance=0.3)
    assert len(slow) == 1 and slow[0].startswith("SLOWER a:")
    assert any("absolute time" in n and "c:" in n for n in notes)
    assert any("new item" in n and "new" in n for n in notes)
    assert any("not measured" in n and "gone" in n for n in notes)
    assert any(n.startswith("ok b:") for n in notes)
    other = _results([("x", 1.0, 2.0)])
    for it in other["items"]:
        it["bench"] = "other"  # a benchmark left out of this run is not reported missing
    assert not any("not measured" in n for n in run_all.compare(other, new, 0.3)[1])
    # the machine twice as loaded slows hybridsim and the peer alike: no slowdown
    loaded = _results([("a", 2.0, 20.0), ("b", 2.0, 20.0)])
    assert run_all.compare(old, loaded, tolerance=0.3)[0] == []
    with pytest.raises(ValueError, match="tolerance"):
        run_all.compare(old, new, tolerance=1.5)


def test_each_benchmark_is_compared_with_the_newest_file_that_measured_it(capsys):
    def bench(data, name):
        for it in data["items"]:
            it["bench"] = name
        return data

    # newest first: a later run of lv_step alone must not hide the older radon items
    lv_only = bench(_results([("step", 1.0, 10.0)]), "lv_step")
    both = _results([("step", 1.0, 2.0), ("adjoint", 1.0, 50.0)])
    both["items"][0]["bench"], both["items"][1]["bench"] = "lv_step", "radon"
    files = [("2026-02", Path("new.json"), lv_only), ("2026-01", Path("old.json"), both)]
    new = _results([("step", 1.0, 10.0), ("adjoint", 1.0, 20.0), ("wake", 1.0, 5.0)])
    new["items"][0]["bench"], new["items"][1]["bench"], new["items"][2]["bench"] = (
        "lv_step",
        "radon",
        "fluid",
    )
    refs = run_all.references(new, files)
    assert [(p.name, [i["name"] for i in d["items"]]) for p, d in refs] == [
        ("new.json", ["step"]),
        ("old.json", ["adjoint"]),  # its lv_step item is not the reference
    ]
    assert run_all.report(refs, new, 0.3) == 1  # the adjoint's ratio fell 50x -> 20x
    out = capsys.readouterr().out
    assert "SLOWER adjoint" in out and "fluid: no committed results file" in out
    assert run_all.report([], new, 0.3) == 0


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


# ---- the prepared GPU check, as far as a CPU allows --------------------------------------------
needs_no_cuda = pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the behaviour without CUDA"
)


@needs_no_cuda
def test_gpu_check_without_cuda_fails_in_one_line(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), str(out)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
        timeout=120,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "no CUDA device" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists(), "nothing may run (or be written) without CUDA"


@needs_no_cuda
def test_gpu_bench_without_cuda_fails_in_one_line(tmp_path):
    cmd = [sys.executable, str(BENCH / "gpu_bench.py"), "--out", str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "no CUDA device" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_autocast_networks_keeps_the_solver_dtype():
    import torch

    gpu_bench = _module("gpu_bench")
    net = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    ref = net(x)
    gpu_bench.autocast_networks([net], torch.device("cpu"))
    out = net(x)
    assert out.dtype == torch.float32, "the solver must get its own dtype back"
    assert not torch.equal(out, ref), "the network did not run in bfloat16"
    assert torch.allclose(out, ref, rtol=0.05, atol=0.05)


@pytest.mark.slow
def test_gpu_bench_code_path_on_cpu_at_tiny_sizes(tmp_path):
    """Every part, eager and bf16, at tiny sizes on the CPU: the script the GPU check runs."""
    cmd = [sys.executable, str(BENCH / "gpu_bench.py"), "--device", "cpu", "--tiny"]
    cmd += ["--modes", "eager", "bf16", "--repeats", "1", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    gpu_bench = _module("gpu_bench")
    assert set(summary["parts"]) == set(gpu_bench.PARTS)
    for name, part in summary["parts"].items():
        assert part["status"] == "ok", (name, part)
        modes = {"eager"} if name in gpu_bench.NO_NETWORK else {"eager", "bf16"}
        assert set(part["modes"]) == modes, (name, part["modes"])
        for mode, m in part["modes"].items():
            assert "error" not in m, (name, mode, m)
            assert m["n"] >= 1 and 0 < m["min_s"] <= m["median_s"] <= m["max_s"]
    table = (tmp_path / "summary.md").read_text()
    assert all(f"| {name} | eager |" in table for name in gpu_bench.PARTS)


def test_markdown_table_of_a_results_file(tmp_path):
    data = _results([("a", 1.0, 10.0), ("b", 2.0, None)])
    data["items"][1]["note"] = "|x| small"
    data["machine"].update(commit="abc", versions={"torch": "2"}, cores=2, threads=1)
    text = run_all.markdown(data)
    rows = [line for line in text.splitlines() if line.startswith("| b |")]
    assert len(rows) == 2 and "10.00x" in rows[0] and "peer:" in rows[0]
    assert rows[1].count("|") - rows[1].count("\\|") == 7 and "x |" not in rows[1]
    assert "commit abc" in text


SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name != "common.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_answers_help_and_writes_nothing(tmp_path, script, monkeypatch, capsys):
    """``--help`` prints usage and exits 0 without running anything (no folder, no file). Run
    in this process (runpy): a subprocess per script cost ~4 s of interpreter and torch start."""
    import runpy

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    monkeypatch.setattr(sys, "path", [str(BENCH), *sys.path])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(BENCH / script), run_name="__main__")
    assert exit_.value.code in (0, None)
    assert "usage:" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/usr/bin/time").exists(), reason="needs GNU time")
def test_time_to_first_result_script_with_a_stub_hybridsim(tmp_path):
    """The committed time-to-first-result command: its argument errors, and the summary it
    writes from the runs (a stub `hybridsim` that takes 0.2 s stands in for the real one)."""
    script = BENCH / "time_to_first_result.sh"
    stub = tmp_path / "bin" / "hybridsim"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\nsleep 0.2\necho "$@" > args.txt\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub.parent}:/usr/bin:/bin"}

    def run(*args):
        return subprocess.run(
            ["bash", str(script), *args], capture_output=True, text=True, env=env, cwd=tmp_path
        )

    bad = run("--repeats", "x")
    assert bad.returncode == 2 and "--repeats" in bad.stderr
    assert run("--frobnicate").returncode == 2
    out = tmp_path / "ttfr"
    ok = run("--out", str(out), "--repeats", "2", "lv", "ct")
    assert ok.returncode == 0, ok.stderr
    assert (out / "lv-1" / "args.txt").read_text().split() == [
        "train",
        "problem=lv",
        "progress=none",
    ]
    summary = (out / "summary.txt").read_text()
    assert summary.count(" rc=0 ") == 4
    for p in ("lv", "ct"):
        line = next(x for x in summary.splitlines() if x.startswith(f"{p}: wall"))
        assert "(n=2)" in line
        wall = float(line.split("wall ")[1].split()[0])
        assert 0.0 <= wall < 10.0
    again = run("--out", str(out), "lv")  # never writes into an existing folder
    assert again.returncode == 2 and "exists" in again.stderr
