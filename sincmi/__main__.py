"""The everyday jobs from the command line, after ``pip install``.

    python -m sincmi verify MODEL A.wav B.wav [--threshold far=0.01]
    python -m sincmi embed MODEL DIR OUT [--window 1.5 --hop 0.75]
    python -m sincmi export EXPERIMENT MODEL [--backend whiten] [--threshold eer]
    python -m sincmi threshold MODEL PAIRS.txt [--set far=0.01]
    python -m sincmi shards MANIFEST.csv [MANIFEST.csv ...] OUT --data_root DIR [--files_per_shard 500]

MODEL is a folder written by ``export`` (from a recipe run's output folder): the
encoder with the run's back end (and score normalisation), which ``verify``,
``embed`` and ``threshold`` apply. ``embed`` writes the one embeddings format
that ``tools/score_trials.py`` reads.
``threshold`` scores known pairs of your own recordings (``label a.wav b.wav``
per line, label 1 for the same speaker, 0 for different ones; relative paths
are taken from the pairs file's folder) and shows the error rates of each
operating point on them; ``--set`` stores one in MODEL.
``shards`` packs a recipe's training manifest into WebDataset shards for LIM on
large corpora (``--train_shards=OUT``; see :mod:`sincmi.shards`).
"""

import argparse
import os
import sys

from sincmi.scoring import labelled_lines
from sincmi.thresholds import SPEC_HELP, describe

COMMANDS = ("verify", "embed", "export", "threshold", "shards")


def verify(argv):
    parser = argparse.ArgumentParser(prog="python -m sincmi verify",
                                     description="Are two recordings from the same speaker?")
    parser.add_argument("model", help="model folder (written by python -m sincmi export)")
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--threshold", help=f"default: the model's; or {SPEC_HELP}")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    for path in (args.a, args.b):  # before the (slower) model load
        if not os.path.isfile(path):
            sys.exit(f"error: {path} does not exist")
    model = load_model(args.model, args.device)
    try:
        result = model.verify_files(args.a, args.b, args.threshold)
    except ValueError as error:
        sys.exit(f"error: {error}")
    print(f"score {result.score:.4f}")
    if result.operating_point is None:
        print("same speaker: unknown (the model has no threshold: pass --threshold)")
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


def threshold(argv):
    from sincmi.export import set_threshold
    from sincmi.thresholds import operating_point, score_summary

    parser = argparse.ArgumentParser(prog="python -m sincmi threshold",
                                     description="Operating points of a model on known pairs of your recordings.")
    parser.add_argument("model", help="model folder (written by python -m sincmi export)")
    parser.add_argument("pairs", help="'label a.wav b.wav' per line: 1 same speaker, 0 different")
    parser.add_argument("--set", dest="spec", help=f"store this operating point in the model: {SPEC_HELP}")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        pairs = read_pairs(args.pairs)
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")
    targets = sum(label for label, _, _ in pairs)
    if not targets or targets == len(pairs):
        sys.exit(f"error: {args.pairs} needs pairs of both kinds (has {targets} same-speaker "
                 f"and {len(pairs) - targets} different-speaker pairs)")
    model = load_model(args.model, args.device)
    embeddings = {path: model.encode_file(path) for path in sorted({p for _, a, b in pairs for p in (a, b)})}
    scores = [(label, model.score(embeddings[a], embeddings[b])) for label, a, b in pairs]
    summary = score_summary([s for label, s in scores if label], [s for label, s in scores if not label])
    summary["source"] = os.path.abspath(args.pairs)
    print(f"{len(pairs)} pairs ({targets} same speaker): EER {100 * summary['eer']:.2f} %")
    for spec in ("eer", "far=0.01", "frr=0.05"):
        print("  " + describe(operating_point(summary, spec)))
    if model.threshold is not None:
        print("  the model's threshold now: " + describe(operating_point(summary, model.threshold)))
    if args.spec:
        try:
            point = operating_point(summary, args.spec)
        except ValueError as error:
            sys.exit(f"error: {error}")
        set_threshold(args.model, summary, point)
        print(f"stored in {args.model}: {describe(point)}")


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


def load_model(folder, device="cpu"):
    from sincmi.inference import SpeakerEncoder

    if not os.path.isfile(os.path.join(folder, "hyperparams.yaml")):
        sys.exit(f"error: {folder} is not a model folder (no hyperparams.yaml): "
                 "write one with python -m sincmi export EXPERIMENT FOLDER")
    return SpeakerEncoder.from_hparams(source=folder, run_opts={"device": device})


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
    elif command == "embed":
        from sincmi.extract import main as embed

        embed(rest)
    else:
        from sincmi.export import main as export

        export(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
