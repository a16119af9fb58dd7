#!/usr/bin/env python3
"""Draws an experiment's figures as PNG files (the recipes draw them at the end of a run too).

* ``training_curves.png``: every series of ``train_log.txt``, one row per stage;
* ``det_<system>.png``: the DET curve of each ``scores_<system>.txt.gz``;
* ``embeddings_map.png`` with ``--embeddings X.pt`` (from
  ``python -m sincmi embed ... --format pt``): a 2-D PCA map coloured by speaker.

Usage:
    python tools/plot_experiment.py results/Demo/lim_nce/1234 [--embeddings emb/demo.pt]
"""

import argparse
import glob
import os
import sys

import torch

from sincmi.scoring import read_scores
from sincmi.plots import det_curve, embedding_map, training_curves


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="output_folder of a recipe run")
    parser.add_argument("--embeddings", help=".pt file from python -m sincmi embed ... --format pt")
    parser.add_argument("--out_folder", help="default: the experiment folder")
    args = parser.parse_args(argv)
    out = args.out_folder or args.experiment
    os.makedirs(out, exist_ok=True)
    written = []
    log = os.path.join(args.experiment, "train_log.txt")
    if os.path.isfile(log):
        written.append(training_curves(log, os.path.join(out, "training_curves.png")))
    for scores in sorted(glob.glob(os.path.join(args.experiment, "scores_*.txt.gz"))):
        name = os.path.basename(scores)[len("scores_"):-len(".txt.gz")]
        written.append(det_curve({name: read_scores(scores)}, os.path.join(out, f"det_{name}.png")))
    if args.embeddings:
        saved = torch.load(args.embeddings, weights_only=True)
        written.append(embedding_map(saved["embeddings"].numpy(), saved["speakers"],
                                     os.path.join(out, "embeddings_map.png")))
    if not written:
        sys.exit(f"error: {args.experiment} has no train_log.txt or scores_*.txt.gz to plot")
    print("\n".join(written))


if __name__ == "__main__":
    main()
