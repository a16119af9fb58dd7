"""Command-line tools on small inputs."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from sincmi.extract import save_embeddings


def run_tool(name, *args):
    """Runs ``tools/<name>``, or ``python -m sincmi <command>`` for a name without ``.py``."""
    command = [os.path.join(ROOT, "tools", name)] if name.endswith(".py") else ["-m", "sincmi", name]
    return subprocess.run([sys.executable, *command, *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_score_trials_end_to_end(tmp_path):
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=gen)
    emb = {f"s{s}_u{u}": centres[s] + 0.3 * torch.randn(8, generator=gen) for s in range(3) for u in range(4)}
    ids = sorted(emb)
    save_embeddings(str(tmp_path / "emb"), "pt", ids, [f"{i}.wav" for i in ids], [i[:2] for i in ids],
                    torch.stack([emb[i] for i in ids]))
    trials = [(int(a[:2] == b[:2]), a, b) for i, a in enumerate(ids) for b in ids[i + 1:]]
    (tmp_path / "trials.txt").write_text("".join(f"{l} {a} {b}\n" for l, a, b in trials))
    save_embeddings(str(tmp_path / "cohort"), "npy", [f"c{i}" for i in range(10)], [""] * 10, [""] * 10,
                    torch.randn(10, 8, generator=gen))
    proc = run_tool("score", tmp_path / "emb.pt", tmp_path / "trials.txt", "--out_folder",
                    tmp_path / "out", "--cohort", tmp_path / "cohort.npy", "--score_norm", "s-norm")
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "out" / "results.json") as f:
        results = json.load(f)
    assert results["target_trials"] == 3 * 6 and results["nontarget_trials"] == len(trials) - 18
    assert results["EER"] < 0.2  # well-separated speakers
    lines = (tmp_path / "out" / "scores.txt").read_text().splitlines()
    assert len(lines) == len(trials) and lines[0].split()[:2] == [trials[0][1], trials[0][2]]
    assert os.path.getsize(tmp_path / "out" / "det.png") > 1000


def test_score_trials_rejects_a_malformed_line(tmp_path):
    save_embeddings(str(tmp_path / "emb"), "pt", ["a", "b"], ["a.wav", "b.wav"], ["", ""], torch.ones(2, 2))
    (tmp_path / "trials.txt").write_text("1 a b\nthis is wrong\n")
    proc = run_tool("score", tmp_path / "emb.pt", tmp_path / "trials.txt")
    assert proc.returncode != 0 and "trials.txt:2" in proc.stderr


def test_benchmark_scoring_section_agrees_with_speechbrain(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--sections", "scoring",
                           "--trials", "20000", "--speechbrain_trials", "2000", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.load(open(out))["scoring"]
    ours = {r["trials"]: r for r in rows if r["implementation"].startswith("sincmi")}
    theirs = {r["trials"]: r for r in rows if r["implementation"] == "speechbrain" and r.get("seconds") is not None}
    assert set(ours) == {2000, 20000} and set(theirs) == {2000}
    assert ours[2000]["EER"] == pytest.approx(theirs[2000]["EER"], abs=1e-6)


def test_benchmark_rounds_report_the_median_and_the_ratio_per_round(monkeypatch):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import benchmark

    speeds = iter([100.0, 300.0, 120.0, 240.0, 80.0, 400.0])  # rounds of (base, fast)
    monkeypatch.setattr(benchmark, "_in_child", lambda fn, *args: {"chunks_per_s": next(speeds)})
    rows, runs = benchmark._rounds(None, [("base", ()), ("fast", ())], rounds=3)
    benchmark._speedups(rows, runs, "base")
    by_name = {row["implementation"]: row for row in rows}
    assert by_name["base"]["chunks_per_s"] == 100.0 and by_name["fast"]["chunks_per_s"] == 300.0
    assert by_name["fast"]["speedup"] == 3.0  # median of 3.0, 2.0, 5.0
    assert by_name["fast"]["speedup_range"] == [2.0, 5.0]


def _environment_variable(name):
    return os.environ.get(name)


def test_benchmark_allocator_setting_reaches_the_measuring_processes(monkeypatch):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import benchmark

    for name, value in benchmark.KEEP_FREED_MEMORY.items():
        monkeypatch.setenv(name, value)
    seen = benchmark._in_child(_environment_variable, "MALLOC_TRIM_THRESHOLD_")
    assert seen == benchmark.KEEP_FREED_MEMORY["MALLOC_TRIM_THRESHOLD_"]


def test_benchmark_profile_lists_the_step_operators_and_the_native_kernels():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import benchmark
    from sincmi import cpu_kernels

    rows = benchmark._profile("step", "fast", top=1000, calls=1)
    times = [row["ms_per_call"] for row in rows]
    assert times == sorted(times, reverse=True) and times[0] > 0
    assert sum(row["share"] for row in rows) == pytest.approx(1.0)
    names = {row["operator"] for row in rows}
    assert {"aten::convolution_backward", "aten::mm"} <= names  # the shared layers
    if cpu_kernels.available(torch.zeros(1)):  # each native kernel is labelled, once per micro-batch
        calls = {row["operator"]: row["calls"] for row in rows}
        assert calls["sincmi::pool_norm_act"] == calls["sincmi::pool_norm_act_backward"] == 256 / 8
        assert calls["sincmi::mlp_grid"] == calls["sincmi::mlp_grid_backward"] == 1
