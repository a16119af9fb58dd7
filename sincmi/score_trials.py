#!/usr/bin/env python3
"""Scores a trial list on embeddings written by ``python -m sincmi embed``: cosine, or the model's PLDA.

Embeddings: the ``OUT.pt`` or ``OUT.npy`` (with ``OUT.csv``) of ``python -m
sincmi embed MODEL SOURCE OUT`` (:func:`sincmi.extract.load_embeddings`),
after the model's back end. Trials: one ``label enrol test`` per line
(VoxCeleb format, label 0/1), the ids being those of the embeddings (embed
a recipe's ``save/verification.csv`` to get its trial ids). Writes a score
file (``enrol test score label``), ``results.json`` (EER, minDCF at p_target
0.01 and 0.05) and a DET curve PNG into ``--out_folder``.

Usage:
    python -m sincmi embed MODEL results/Demo/lim_nce/1234/save/verification.csv emb/verification --data_root DIR
    python -m sincmi score emb/verification.npy results/Demo/lim_nce/1234/save/trials.txt --out_folder scores/
    python -m sincmi score EMB.npy TRIALS.txt --cohort COHORT.npy --score_norm as-norm --top_k 300
    python -m sincmi score EMB.npy TRIALS.txt --model MODEL   # a model with the plda back end
"""

import argparse
import json
import os
import sys


from sincmi import extract, layout
from sincmi.backend import Backend
from sincmi.plda import COSINE
from sincmi.metrics import verification_metrics
from sincmi.scoring import SCORE_NORMS, read_trials, score_trials, write_scores
from sincmi.plots import det_curve


def load_embeddings(path):
    """The :class:`~sincmi.scoring.EmbeddingTable` of an embed output, or a one-line error naming the file.

    Scored as one matrix in bounded chunks: the peak memory is the embeddings'
    own size plus a constant, whatever the number of trials.
    """
    try:
        return extract.load_embedding_table(path)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: {err}") from err


def model_scorer(model):
    """The scorer of a model folder's back end (the cosine without one), or a one-line error."""
    path = os.path.join(model, layout.BACKEND_FILE)
    if not os.path.isfile(os.path.join(model, layout.HPARAMS_FILE)):
        raise SystemExit(f"error: {model} is not a model folder (no {layout.HPARAMS_FILE}): "
                         "give the folder python -m sincmi export wrote")
    try:
        return Backend.load(path).scorer if os.path.isfile(path) else COSINE
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: {err}") from err


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sincmi score", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("embeddings", help="OUT.pt or OUT.npy written by python -m sincmi embed")
    parser.add_argument("trials", help="trial list: 'label enrol test' per line")
    parser.add_argument("--out_folder", default=".")
    parser.add_argument("--cohort", help="cohort embeddings, also written by python -m sincmi embed")
    parser.add_argument("--score_norm", choices=[m for m in SCORE_NORMS if m], default=None)
    parser.add_argument("--top_k", type=int, default=None, help="cohort size per utterance for as-norm")
    parser.add_argument("--model", help="the model that embedded them: its back end's scorer (PLDA) scores them; "
                                        "default: cosine")
    args = parser.parse_args(argv)
    scorer = model_scorer(args.model) if args.model else COSINE

    embeddings = load_embeddings(args.embeddings)
    try:
        trials = read_trials(args.trials)
    except (OSError, ValueError) as err:
        raise SystemExit(str(err)) from err
    cohort = None
    if args.cohort:
        cohort = load_embeddings(args.cohort).matrix.float()
    if args.score_norm == "as-norm" and args.top_k is None:
        raise SystemExit("--score_norm as-norm needs --top_k (e.g. 300)")
    try:
        scores, labels = score_trials(embeddings, trials, cohort, args.score_norm, args.top_k, scorer)
    except (KeyError, ValueError) as err:
        raise SystemExit(f"{args.trials}: {err}") from err

    os.makedirs(args.out_folder, exist_ok=True)
    write_scores(os.path.join(args.out_folder, "scores.txt"), trials, scores.tolist())
    metrics = verification_metrics(scores[labels], scores[~labels])
    metrics["score_norm"] = args.score_norm
    with open(os.path.join(args.out_folder, layout.RESULTS_FILE), "w") as f:
        json.dump(metrics, f, indent=2)
    det_curve({os.path.basename(args.embeddings): (scores[labels], scores[~labels])},
              os.path.join(args.out_folder, "det.png"))
    print(f"EER {100 * metrics['EER']:.2f} %  minDCF(0.01) {metrics['minDCF_0.01']:.4f}  "
          f"minDCF(0.05) {metrics['minDCF_0.05']:.4f}  ({metrics['target_trials']} target, "
          f"{metrics['nontarget_trials']} non-target trials)")


if __name__ == "__main__":
    sys.exit(main())
