#!/usr/bin/env python3
"""Scores a trial list against an embedding file; usable without any recipe.

Embeddings: a ``.pt`` file holding ``{utterance id: 1-D tensor}`` (loaded
with ``weights_only=True``, no pickled code is run). Trials: one
``label enrol test`` per line (VoxCeleb format, label 0/1). Writes a score
file (``enrol test score label``), ``results.json`` (EER, minDCF at p_target
0.01 and 0.05) and a DET curve PNG into ``--out_folder``.

Usage:
    python tools/score_trials.py EMBEDDINGS.pt TRIALS.txt --out_folder scores/
    python tools/score_trials.py EMBEDDINGS.pt TRIALS.txt --cohort COHORT.pt --score_norm as-norm --top_k 300
"""

import argparse
import json
import os
import sys

import torch

from sincmi.metrics import verification_metrics
from sincmi.scoring import SCORE_NORMS, read_trials, score_trials
from sincmi.plots import det_curve


def load_embeddings(path):
    """``{id: tensor}`` from a ``.pt`` file, with a clear error for anything else."""
    try:
        embeddings = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SystemExit(f"{path}: cannot read embeddings ({type(err).__name__}: {err})") from err
    if isinstance(embeddings, torch.Tensor):
        return embeddings
    if not isinstance(embeddings, dict) or not embeddings:
        raise SystemExit(f"{path}: expected a non-empty dict {{utterance id: tensor}}")
    return embeddings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("embeddings", help=".pt file: {utterance id: embedding}")
    parser.add_argument("trials", help="trial list: 'label enrol test' per line")
    parser.add_argument("--out_folder", default=".")
    parser.add_argument("--cohort", help=".pt file: cohort embeddings (dict or (M, D) tensor)")
    parser.add_argument("--score_norm", choices=[m for m in SCORE_NORMS if m], default=None)
    parser.add_argument("--top_k", type=int, default=None, help="cohort size per utterance for as-norm")
    args = parser.parse_args(argv)

    embeddings = load_embeddings(args.embeddings)
    try:
        trials = read_trials(args.trials)
    except (OSError, ValueError) as err:
        raise SystemExit(str(err)) from err
    cohort = None
    if args.cohort:
        cohort = load_embeddings(args.cohort)
        if isinstance(cohort, dict):
            cohort = torch.stack([v.float() for v in cohort.values()])
    if args.score_norm == "as-norm" and args.top_k is None:
        raise SystemExit("--score_norm as-norm needs --top_k (e.g. 300)")
    try:
        scores, labels = score_trials(embeddings, trials, cohort, args.score_norm, args.top_k)
    except (KeyError, ValueError) as err:
        raise SystemExit(f"{args.trials}: {err}") from err

    os.makedirs(args.out_folder, exist_ok=True)
    with open(os.path.join(args.out_folder, "scores.txt"), "w") as f:
        for (label, enrol, test), score in zip(trials, scores.tolist()):
            f.write(f"{enrol} {test} {score:.6f} {label}\n")
    metrics = verification_metrics(scores[labels], scores[~labels])
    metrics["score_norm"] = args.score_norm
    with open(os.path.join(args.out_folder, "results.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    det_curve({os.path.basename(args.embeddings): (scores[labels], scores[~labels])},
              os.path.join(args.out_folder, "det.png"))
    print(f"EER {100 * metrics['EER']:.2f} %  minDCF(0.01) {metrics['minDCF_0.01']:.4f}  "
          f"minDCF(0.05) {metrics['minDCF_0.05']:.4f}  ({metrics['target_trials']} target, "
          f"{metrics['nontarget_trials']} non-target trials)")


if __name__ == "__main__":
    sys.exit(main())
