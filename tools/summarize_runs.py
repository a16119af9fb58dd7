#!/usr/bin/env python3
"""Mean and range over several runs of one configuration (seeds, thread counts): the README's tables.

Reads each run's ``results.json`` and prints, per system row, the mean EER
(with its range), mean minDCF, and the calibration figures (mean actDCF
with its ratio to minDCF, Cllr - minCllr: each as mean and range), the mean
speaker-id CER (with its range), and the runs' seeds, threads and commits
(from their provenance).

Usage:
    python tools/summarize_runs.py results/Demo/lim_nce/1234 results/Demo/lim_nce/1235 ...
"""

import argparse
import json
import os
import sys

from sincmi import layout


def summarize(folders):
    """``(rows, runs)``: per system row ``{EER, minDCF, CER}`` lists over the runs; the runs' provenance."""
    results = []
    for folder in folders:
        path = os.path.join(folder, layout.RESULTS_FILE)
        if not os.path.isfile(path):
            raise SystemExit(f"error: {path} is missing: pass the output folders of finished runs")
        with open(path) as f:
            results.append(json.load(f))
    names = [name for name in results[0]["systems"] if all(name in r["systems"] for r in results)]
    rows = {}
    for name in names:
        values = [r["systems"][name] for r in results]
        rows[name] = {key: [100 * v[key] if key in ("EER", "sentence_error") else v[key] for v in values if key in v]
                      for key in ("EER", "minDCF_0.01", "actDCF_0.01", "sentence_error")}
        calibrated = [v for v in values if "Cllr" in v]
        rows[name]["actDCF / minDCF"] = [v["actDCF_0.01"] / max(v["minDCF_0.01"], 1e-12) for v in calibrated]
        rows[name]["Cllr - minCllr"] = [v["Cllr"] - v["minCllr"] for v in calibrated]
    return rows, [r.get("provenance", {}) for r in results]


def cell(values, digits=2, spread=True):
    if not values:
        return "-"
    mean = sum(values) / len(values)
    text = f"{mean:.{digits}f}"
    return text + (f" ({min(values):.{digits}f}-{max(values):.{digits}f})" if spread and len(values) > 1 else "")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="output folders of finished runs")
    args = parser.parse_args(argv)
    rows, runs = summarize(args.runs)
    print(f"| system | EER % ({len(args.runs)} runs: mean (range)) | minDCF (0.01) | actDCF (0.01) "
          "| actDCF / minDCF | Cllr - minCllr | speaker-id CER % |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {cell(row['EER'])} | {cell(row['minDCF_0.01'], 3, False)} | "
              f"{cell(row['actDCF_0.01'], 3, False)} | {cell(row['actDCF / minDCF'])} | "
              f"{cell(row['Cllr - minCllr'], 3)} | {cell(row['sentence_error'])} |")
    for folder, run in zip(args.runs, runs):
        git = run.get("git") or {}
        print(f"{folder}: seed {run.get('seed', '?')}, {run.get('torch_threads', '?')} thread(s), "
              f"commit {str(git.get('commit', '?'))[:7]}{' (modified)' if git.get('modified') else ''}")


if __name__ == "__main__":
    sys.exit(main())
