#!/usr/bin/env python3
"""Benchmarks of sincmi against the straightforward implementations, in one process.

Sections (``--sections``):

* ``scoring``: EER + minDCF (p_target 0.01 and 0.05) by sorting, for 1 M and
  10 M trials, time and peak memory (peak RSS of the process, which includes
  the ~0.5 GiB of the imported libraries, and what the computation added);
  SpeechBrain's ``EER``/``minDCF`` on the sizes they can handle (their minDCF
  builds a thresholds x trials matrix, their EER loops over every threshold),
  with the memory the larger sizes would need.

Each measurement runs in a child process so that its peak memory (max RSS) is
its own. Prints a table and writes JSON (``--out``).

Usage:
    python tools/benchmark.py --sections scoring --out benchmark.json
"""

import argparse
import json
import multiprocessing
import os
import platform
import resource
import sys
import time

import numpy as np


def _random_scores(n_trials, seed=0):
    rng = np.random.default_rng(seed)
    n_target = max(1, n_trials // 100)  # VoxCeleb1-E/H-like ratio
    pos = rng.normal(1.5, 1.0, n_target).astype(np.float32)
    neg = rng.normal(0.0, 1.0, n_trials - n_target).astype(np.float32)
    return pos, neg


def _measure(implementation, n_trials):
    """EER + minDCF (0.01, 0.05) of random scores: seconds and peak memory."""
    # sincmi's minDCF is normalised, SpeechBrain's is not: compare EERs, and times.
    if implementation == "sincmi":
        from sincmi.metrics import verification_metrics

        pos, neg = _random_scores(n_trials)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        metrics = verification_metrics(pos, neg, p_targets=(0.01, 0.05))  # one sort for all three
        seconds = time.perf_counter() - start
        value, dcf = metrics["EER"], [metrics["minDCF_0.01"], metrics["minDCF_0.05"]]
    else:
        import torch
        from speechbrain.utils.metric_stats import EER, minDCF

        pos, neg = (torch.from_numpy(x) for x in _random_scores(n_trials))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        value = EER(pos, neg)[0]
        dcf = [minDCF(pos, neg, p_target=p)[0] for p in (0.01, 0.05)]
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_rss_mib": peak / 1024, "extra_rss_mib": (peak - base) / 1024,
            "EER": value, "minDCF": dcf}


def _in_child(fn, *args):
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(fn, args)


def scoring_section(sizes, speechbrain_sizes):
    rows = []
    for n in sorted(set(sizes) | set(speechbrain_sizes)):
        rows.append({"implementation": "sincmi (sort)", "trials": n, **_in_child(_measure, "sincmi", n)})
    for n in speechbrain_sizes:
        rows.append({"implementation": "speechbrain", "trials": n, **_in_child(_measure, "speechbrain", n)})
    # SpeechBrain's minDCF copies the scores once per threshold: ~2n thresholds
    # (scores and midpoints) x n trials in float32, 8 n^2 bytes before its boolean masks.
    for n in sizes:
        if n not in speechbrain_sizes:
            need_gib = 8 * n * n / 2**30
            rows.append({"implementation": "speechbrain", "trials": n, "seconds": None,
                         "note": f"not run: minDCF would allocate at least {need_gib:,.0f} GiB"})
    return rows


def print_table(rows):
    print(f"{'implementation':<16}{'trials':>12}{'seconds':>10}{'peak MiB':>10}{'added MiB':>11}{'EER %':>9}  note")
    for r in rows:
        seconds = f"{r['seconds']:.3f}" if r.get("seconds") is not None else "-"
        peak = f"{r['peak_rss_mib']:.0f}" if "peak_rss_mib" in r else "-"
        extra = f"{r['extra_rss_mib']:.0f}" if "extra_rss_mib" in r else "-"
        value = f"{100 * r['EER']:.3f}" if "EER" in r else "-"
        print(f"{r['implementation']:<16}{r['trials']:>12,}{seconds:>10}{peak:>10}{extra:>11}{value:>9}  {r.get('note', '')}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=["scoring"], choices=["scoring"])
    parser.add_argument("--trials", nargs="+", type=int, default=[1_000_000, 10_000_000])
    parser.add_argument("--speechbrain_trials", nargs="+", type=int, default=[2_000, 10_000])
    parser.add_argument("--out", default="benchmark.json")
    args = parser.parse_args(argv)

    results = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": sys.version.split()[0]},
    }
    if "scoring" in args.sections:
        print("== EER + minDCF (p_target 0.01 and 0.05) ==")
        rows = scoring_section(args.trials, args.speechbrain_trials)
        print_table(rows)
        results["scoring"] = rows
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
