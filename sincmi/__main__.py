"""The everyday jobs from the command line, after ``pip install``.

    python -m sincmi verify MODEL A.wav B.wav [--threshold far=0.01]
    python -m sincmi embed MODEL DIR OUT [--window 1.5 --hop 0.75]
    python -m sincmi export EXPERIMENT MODEL [--backend whiten] [--threshold eer]
    python -m sincmi threshold MODEL PAIRS.txt [--set far=0.01] [--calibrate]
    python -m sincmi score EMBEDDINGS.npy TRIALS.txt [--out_folder DIR]
    python -m sincmi shards MANIFEST.csv [MANIFEST.csv ...] OUT --data_root DIR [--files_per_shard 500]

MODEL is a folder written by ``export`` (from a recipe run's output folder): the
encoder with the run's back end (and score normalisation), which ``verify``,
``embed`` and ``threshold`` apply; ``verify`` prints the score, its log-likelihood
ratio (the run's calibration) and the decision. ``embed`` writes the one
embeddings format that ``score`` reads (EER, minDCF and a DET curve of a trial list).
``threshold`` scores known pairs of your own recordings (``label a.wav b.wav``
per line, label 1 for the same speaker, 0 for different ones; relative paths
are taken from the pairs file's folder) and shows the error rates of each
operating point on them; ``--set`` stores one in MODEL, ``--calibrate`` refits its
calibration on them.
``shards`` packs a recipe's training manifest into WebDataset shards for LIM on
large corpora (``--train_shards=OUT``; see :mod:`sincmi.shards`).
"""

import argparse
import os
import sys

from sincmi.audio import readable_info
from sincmi.command_line import load_model, one_line_errors
from sincmi.scoring import labelled_lines
from sincmi.thresholds import SPEC_HELP, describe, parse_spec

COMMANDS = ("verify", "embed", "export", "threshold", "score", "shards")


def verify(argv):
    parser = argparse.ArgumentParser(prog="python -m sincmi verify",
                                     description="Are two recordings from the same speaker?")
    parser.add_argument("model", help="model folder (written by python -m sincmi export)")
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--threshold", help=f"decide at this operating point instead: {SPEC_HELP}")
    parser.add_argument("--p_target", type=float, default=None,
                        help="prior of a same-speaker trial for the Bayes decision on calibrated scores "
                             "(default: the model's, 0.01)")
    parser.add_argument("--pad_short", action="store_true", help="zero-pad audio shorter than one chunk")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    with one_line_errors():
        for path in (args.a, args.b):  # before the (slower) model load
            readable_info(path)
        model = load_model(args.model, args.device)
        result = model.verify_files(args.a, args.b, args.threshold, args.p_target, args.pad_short)
    print(f"score {result.score:.4f}")
    if result.llr is not None:
        print(f"log-likelihood ratio {result.llr:.2f} (calibrated on {model.calibration.source})")
    if result.operating_point is None:
        print("same speaker: unknown (the model has neither a calibration nor a threshold: pass --threshold)")
    else:
        print(f"same speaker: {'yes' if result.same_speaker else 'no'} ({describe(result.operating_point)})")


def read_pairs(path):
    """``[(same speaker, path_a, path_b)]`` of a pairs file; relative paths from its folder."""
    folder = os.path.dirname(os.path.abspath(path))
    pairs = []
    for number, (label, *files) in labelled_lines(path, "label a.wav b.wav", 0, comments=True):
        a, b = (p if os.path.isabs(p) else os.path.join(folder, p) for p in files)
        for audio in (a, b):
            if not os.path.isfile(audio):
                raise ValueError(f"{path}:{number}: {audio} does not exist")
        pairs.append((label == "1", a, b))
    return pairs


def pairs_needed(spec, targets, nontargets):
    """A warning when there are too few pairs to show the error rate ``spec`` names (rule of three), else None.

    >>> pairs_needed("far=0.01", 50, 10)
    'far=0.01: a FAR of 1 % needs about 300 different-speaker pairs; there are 10'
    """
    from sincmi.calibration import required_trials

    kind, value = parse_spec(spec)
    if kind not in ("far", "frr") or not value:
        return None
    count, what = (nontargets, "different-speaker") if kind == "far" else (targets, "same-speaker")
    needed = required_trials(value)
    if count >= needed:
        return None
    return f"{spec}: a{'n' if kind == 'frr' else ''} {kind.upper()} of {100 * value:g} % needs about {needed} {what} pairs; there are {count}"


def threshold(argv):
    from sincmi.calibration import Calibration, required_trials, score_transform
    from sincmi.progress import progress_bar
    from sincmi.export import set_calibration, set_threshold
    from sincmi.thresholds import operating_point, score_summary

    parser = argparse.ArgumentParser(prog="python -m sincmi threshold",
                                     description="Operating points and calibration of a model on known pairs "
                                                 "of your recordings.")
    parser.add_argument("model", help="model folder (written by python -m sincmi export)")
    parser.add_argument("pairs", help="'label a.wav b.wav' per line: 1 same speaker, 0 different")
    parser.add_argument("--set", dest="spec", help=f"store this operating point in the model: {SPEC_HELP}")
    parser.add_argument("--replace_summary", action="store_true",
                        help="with --set: the pairs' error curves replace the model's score summary "
                             "(by default the run's summary stays)")
    parser.add_argument("--calibrate", action="store_true",
                        help="refit the model's calibration on these pairs (the run's is kept as calibration_run.ckpt)")
    parser.add_argument("--p_target", type=float, default=0.01, help="prior the calibration is checked and refitted at")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    with one_line_errors():
        if args.spec:
            parse_spec(args.spec)
        pairs = read_pairs(args.pairs)
        targets = sum(label for label, _, _ in pairs)
        if not targets or targets == len(pairs):
            raise ValueError(f"{args.pairs} needs pairs of both kinds (has {targets} same-speaker "
                             f"and {len(pairs) - targets} different-speaker pairs)")
        for path in sorted({p for _, a, b in pairs for p in (a, b)}):
            readable_info(path)
        model = load_model(args.model, args.device)
        embeddings = {path: model.encode_file(path) for path in
                      progress_bar(sorted({p for _, a, b in pairs for p in (a, b)}), desc="Embedding")}
    nontargets = len(pairs) - targets
    scores = [(label, model.score(embeddings[a], embeddings[b])) for label, a, b in pairs]
    positive, negative = [s for label, s in scores if label], [s for label, s in scores if not label]
    summary = score_summary(positive, negative)
    summary["source"] = os.path.abspath(args.pairs)
    print(f"{len(pairs)} pairs ({targets} same speaker, {nontargets} different): EER {100 * summary['eer']:.2f} %")
    for spec in ("eer", "far=0.01", "frr=0.05"):
        print("  " + describe(operating_point(summary, spec)))
    if model.calibration is not None:
        metrics = model.calibration.metrics(positive, negative, args.p_target)
        print(f"  the model's calibration on these pairs: Cllr {metrics['Cllr']:.3f} (minCllr {metrics['minCllr']:.3f}),"
              f" actDCF({args.p_target:g}) {metrics[f'actDCF_{args.p_target:g}']:.3f}")
    if model.threshold is not None:
        print("  the model's threshold now: " + describe(operating_point(summary, model.threshold)))
    warnings = [pairs_needed(spec, targets, nontargets) for spec in [args.spec or "", "far=0.01", "frr=0.05"] if spec]
    if args.calibrate:
        needed = required_trials(args.p_target)
        if nontargets < needed or targets < required_trials(0.1):
            warnings.append(f"calibration for decisions at p_target={args.p_target:g} needs about {needed} "
                            f"different-speaker and {required_trials(0.1)} same-speaker pairs; there are "
                            f"{nontargets} and {targets}")
    for warning in dict.fromkeys(w for w in warnings if w):
        print(f"warning: too few pairs: {warning}", file=sys.stderr)
    if args.spec:
        point = operating_point(summary, args.spec)
        set_threshold(args.model, point, summary if args.replace_summary else None)
        print(f"stored in {args.model}: {describe(point)}"
              + ("" if args.replace_summary else " (the model's score summary is unchanged: --replace_summary "
                                                 "stores these pairs' instead)"))
    if args.calibrate:
        calibration = Calibration.fit(positive, negative, args.p_target, f"{len(pairs)} pairs of {args.pairs}",
                                      score_transform(model.backend.scorer, model.cohort and model.cohort.method))
        set_calibration(args.model, calibration)
        metrics = calibration.metrics(positive, negative, args.p_target)
        print(f"calibration stored in {args.model}: {calibration.describe()} "
              f"(on these pairs: Cllr {metrics['Cllr']:.3f}, minCllr {metrics['minCllr']:.3f}); "
              "the run's is kept as calibration_run.ckpt")


def shards(argv):
    from sincmi.shards import pack_shards

    parser = argparse.ArgumentParser(prog="python -m sincmi shards",
                                     description="Packs manifests' audio into WebDataset shards for LIM.")
    parser.add_argument("paths", nargs="+", metavar="MANIFEST.csv ... OUT", help="manifests, then the output folder")
    parser.add_argument("--data_root", nargs="+", default=[""],
                        help="what $data_root stands for, or name=DIR pairs (voxceleb1=DIR voxceleb2=DIR)")
    parser.add_argument("--files_per_shard", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=None, help="processes writing shards (default: every core)")
    args = parser.parse_args(argv)
    if len(args.paths) < 2:
        parser.error("give at least one manifest and the output folder")
    *manifests, out = args.paths
    for manifest in manifests:
        if not os.path.isfile(manifest):
            sys.exit(f"error: manifest {manifest} not found: run the recipe's preparation first")
    roots = dict(r.split("=", 1) for r in args.data_root if "=" in r)
    data_root = roots or args.data_root[0]
    try:
        index = pack_shards(manifests, out, data_root, args.files_per_shard, args.jobs)
    except (OSError, ValueError, KeyError) as err:
        sys.exit(f"error: {err}")
    if index["skipped"]:
        print(f"{index['skipped']} file(s) not packed: see {os.path.join(out, 'shards_skipped.csv')}", file=sys.stderr)
    print(f"{index['files']} files, {index['segments']} segments in {len(index['shards'])} shards: {out}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)} "
              "(python -m sincmi --help)", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "verify":
        verify(rest)
    elif command == "threshold":
        threshold(rest)
    elif command == "shards":
        shards(rest)
    elif command == "score":
        from sincmi.score_trials import main as score

        score(rest)
    elif command == "embed":
        from sincmi.extract import main as embed

        embed(rest)
    else:
        from sincmi.export import main as export

        export(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
