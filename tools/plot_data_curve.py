#!/usr/bin/env python3
"""What more unlabelled audio buys: LIM's EER and probe CER against the minutes of pretraining audio.

Each ``--point LABEL RUN [RUN ...]`` is one amount of audio (runs with several
seeds); the minutes are read from the runs' ``results.json``
(``pretraining_data``), the EER of every back end and the speaker-id CER are
averaged over the point's runs, with their range as error bars. Prints the
table (markdown) and draws the PNG.

Usage:
    python tools/plot_data_curve.py curve.png --system "LIM (nce)" \\
        --point quarter results/q/1234 results/q/1235 --point all results/a/1234
"""

import argparse
import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sincmi import layout  # noqa: E402

BACKENDS = (("", "raw cosine"), (", standardised", "standardised"), (", whitened", "whitened"))


def pretraining_minutes(run, results):
    """Minutes of audio LIM pretrained on: results.json's ``pretraining_data``, else ``save/pretraining_data.json``,
    else the run's log line."""
    if "pretraining_data" in results:
        return results["pretraining_data"]["minutes"]
    saved = os.path.join(run, "save", "pretraining_data.json")
    if os.path.isfile(saved):
        with open(saved) as f:
            return json.load(f)["minutes"]
    with open(os.path.join(run, "log.txt")) as f:
        found = re.findall(r"LIM pretrains on \d+ segments, ([0-9.]+) min of audio", f.read())
    if not found:
        raise SystemExit(f"error: {run} does not say how much audio LIM pretrained on (no pretraining_data)")
    return float(found[-1])


def load_point(runs, system):
    """``(minutes, pretrain seconds, {metric: [values]})`` over the runs of one point."""
    minutes, seconds, values = [], [], {}
    for run in runs:
        with open(os.path.join(run, layout.RESULTS_FILE)) as f:
            results = json.load(f)
        minutes.append(pretraining_minutes(run, results))
        seconds.append(results["timings_s"]["pretrain"])
        for suffix, label in BACKENDS:
            row = results["systems"].get(system + suffix)
            if row is not None:
                values.setdefault(f"EER % ({label})", []).append(100 * row["EER"])
        values.setdefault("probe CER %", []).append(100 * results["systems"][system]["sentence_error"])
    return sum(minutes) / len(minutes), seconds, values


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("png")
    parser.add_argument("--system", default="LIM (nce)")
    parser.add_argument("--point", nargs="+", action="append", required=True, metavar="LABEL RUN",
                        help="a label and the output folders of that point's runs")
    args = parser.parse_args(argv)
    points = [(label, *load_point(runs, args.system), len(runs)) for label, *runs in args.point]
    points.sort(key=lambda p: p[1])
    metrics = list(points[0][3])
    print("| audio | minutes | runs | " + " | ".join(metrics) + " | pretraining s |")
    print("|---|---|---|" + "---|" * (len(metrics) + 1))
    for label, minutes, seconds, values, count in points:
        cells = []
        for metric in metrics:
            v = values[metric]
            mean = sum(v) / len(v)
            cells.append(f"{mean:.2f}" + (f" ({min(v):.2f}-{max(v):.2f})" if len(v) > 1 else ""))
        print(f"| {label} | {minutes:.1f} | {count} | " + " | ".join(cells) +
              f" | {sum(seconds) / len(seconds):.0f} |")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = [p[1] for p in points]
    for metric in metrics:
        axis = axes[1] if metric.startswith("probe") else axes[0]
        means = [sum(p[3][metric]) / len(p[3][metric]) for p in points]
        low = [m - min(p[3][metric]) for m, p in zip(means, points)]
        high = [max(p[3][metric]) - m for m, p in zip(means, points)]
        axis.errorbar(x, means, yerr=[low, high], marker="o", capsize=3, label=metric)
    for axis, title in zip(axes, ("verification EER % (unseen speakers)", "speaker-id probe CER %")):
        axis.set_xlabel("minutes of audio LIM pretrains on")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    bottom = axes[0].get_ylim()[0]
    for label, minutes, *_ in points:
        axes[0].annotate(label, (minutes, bottom), xytext=(3, 3), textcoords="offset points", fontsize=7)
    fig.suptitle(f"{args.system}: mean over seeds, bars = range")
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    print(f"written {args.png}")


if __name__ == "__main__":
    sys.exit(main())
