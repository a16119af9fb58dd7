"""Packs a finished experiment into a folder that ``SpeakerEncoder.from_hparams`` loads.

The folder holds:

* ``encoder.ckpt``: the encoder of the experiment's final stage (the speaker-id
  or fine-tuning stage's best validation checkpoint, else LIM pretraining's);
* ``hyperparams.yaml``: the inference hyperparameters (encoder configuration,
  sample rate, chunk hop, peak normalisation, decision threshold and the
  operating point it was chosen at);
* ``backend.npz``: the verification back end (``--backend``; default: the
  yaml's ``export_backend``), fitted in the run on the training speakers'
  utterances without labels, applied to every utterance embedding;
* ``cohort.npz``: with the run's score normalisation (``score_norm``, the
  VoxCeleb recipe), its cohort, so that a verification is normalised as the
  run's trials were (``--no_score_norm`` leaves it out);
* ``score_summary.json``: the error curves of the run's verification trials
  with that back end (and normalisation), or of ``--scores``, from which
  ``--threshold`` (and later ``verify_files(..., threshold="far=0.01")``) picks
  an operating point;
* ``classifier.ckpt`` and ``label_encoder.txt`` when the stage has a speaker
  classifier;
* ``encoder_torchscript.pt`` (TorchScript), ``encoder.pt2`` (``torch.export``) and
  ``encoder.onnx`` with ``encoder_onnx.json`` (its input settings, for
  onnxruntime without PyTorch: ``tools/onnx_embed.py``), each checked against the
  eager encoder on the spot.

The summary comes from the scores of the experiment's first system with the
exported back end (``scores_<system>[_<back end>].txt.gz``); a run without
them (or whose normalisation is left out) needs ``--scores`` (a file of
``enrol test score label`` lines of trials you scored) or a numeric
``--threshold``.

Usage:
    python -m sincmi export results/Demo/lim_nce/1234 pretrained/demo_lim
    python -m sincmi export results/Demo/lim_nce/1234 pretrained/demo_lim --backend none --threshold far=0.01
"""

import argparse
import copy
import json
import os
import re
import shutil
import sys

import numpy as np
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.checkpoints import Checkpointer

from sincmi import layout
from sincmi.backend import BACKENDS, Backend
from sincmi.encoder import SincNetEncoder
from sincmi.scoring import read_scores
from sincmi.thresholds import SPEC_HELP, describe, operating_point, score_summary

SUMMARY_FILE = "score_summary.json"
BACKEND_FILE, COHORT_FILE = "backend.npz", "cohort.npz"
ONNX_FILE, ONNX_CONFIG_FILE = "encoder.onnx", "encoder_onnx.json"


def find_stage_checkpoint(save_folder, stage=None):
    """Returns ``(stage, checkpoint folder)`` of the final (or the named) stage."""
    for name in layout.EXPORT_ORDER:
        if stage not in (None, name):
            continue
        folder = layout.stage_folder(save_folder, name)
        if os.path.isdir(folder):
            checkpoint = Checkpointer(folder).find_checkpoint(min_key=layout.best_checkpoint_key(name))
            if checkpoint is not None:
                return name, checkpoint.path
    wanted = stage or " or ".join(layout.EXPORT_ORDER)
    raise FileNotFoundError(
        f"{save_folder} holds no {wanted} checkpoint (CKPT+... folder): pass the output_folder of a "
        "finished recipe run"
    )


def summary_of_scores_file(scores_file):
    """:func:`sincmi.thresholds.score_summary` of an ``enrol test score label`` file."""
    targets, nontargets = read_scores(scores_file)
    if not len(targets) or not len(nontargets):
        raise ValueError(f"{scores_file} needs both target and non-target trials "
                         f"(has {len(targets)} and {len(nontargets)})")
    summary = score_summary(targets, nontargets)
    summary["source"] = os.path.abspath(scores_file)
    return summary


def main_system(experiment):
    """The name of the experiment's first (main) system in its ``results.json``, or None."""
    results_file = os.path.join(experiment, layout.RESULTS_FILE)
    if not os.path.isfile(results_file):
        return None
    with open(results_file) as f:
        systems = [name for name, row in json.load(f).get("systems", {}).items()
                   if row.get("backend", "none") == "none"]
    return systems[0] if systems else None


def main_system_scores(experiment, backend="none"):
    """``(system, scores file or None)`` of the experiment's main system with ``backend``."""
    system = main_system(experiment)
    if system is None:
        return None, None
    path = layout.scores_file(experiment, system, backend)
    return system, path if os.path.isfile(path) else None


def threshold_lines(threshold, operating_point_name):
    """The ``threshold`` and ``operating_point`` lines of the inference hyperparams."""
    threshold_text = "null" if threshold is None else repr(float(threshold))  # exact: decisions match the summary
    point_text = "null" if operating_point_name is None else json.dumps(operating_point_name)
    return (f"threshold: {threshold_text}              # cosine score > threshold: same speaker\n"
            f"operating_point: {point_text}        # how the threshold was chosen (see score_summary.json)")


def inference_yaml(config, shift, normalize_peak, threshold, note, operating_point_name=None, backend="none",
                   score_norm=None, top_k=None):
    """Text of the inference hyperparams file."""
    encoder_args = "\n".join(f"    {key}: {json.dumps(value)}" for key, value in config.items())
    return f"""# ############################################################################
# sincmi inference model: SincNet encoder -> utterance embeddings (mean of the
# L2-normalised embeddings of chunk_size-sample chunks taken every `shift` samples,
# then the back end) -> cosine score (then the score normalisation, if any).
# Load with: sincmi.inference.SpeakerEncoder.from_hparams(source=<this folder>)
# {note}
# ############################################################################

sample_rate: {config["sample_rate"]}
shift: {shift}                      # hop between chunks, samples
normalize_peak: {normalize_peak}           # scale each file to unit peak first (as in training)
backend: {backend}                 # applied to utterance embeddings ({BACKEND_FILE}; none: raw)
score_norm: {json.dumps(score_norm)}              # cosine scores normalised against {COHORT_FILE} (null: none)
cohort_top_k: {json.dumps(top_k)}            # as-norm: the top-k cohort scores of each side
{threshold_lines(threshold, operating_point_name)}

encoder: !new:sincmi.encoder.SincNetEncoder
{encoder_args}

modules:
    encoder: !ref <encoder>

# Loads encoder.ckpt from the source folder.
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        encoder: !ref <encoder>
"""


def plain_copy(encoder):
    """The encoder with the plain layers (``implementation: reference``), same weights, in eval mode.

    The fast kernels (a custom autograd function, loops over micro-batches)
    do not trace; the plain layers compute the same function.
    """
    plain = SincNetEncoder(**{**encoder.config, "implementation": "reference"})
    plain.load_state_dict(encoder.state_dict())
    return plain.eval()


def export_torchscript(encoder, path, chunk_size):
    """Traces the plain-layer implementation of ``encoder``; returns the parity error."""
    plain = plain_copy(encoder)
    example = torch.randn(2, chunk_size)
    with torch.no_grad():
        traced = torch.jit.trace(plain, example)
        traced.save(path)
        check = torch.randn(5, chunk_size)  # another batch size than the trace's
        return float((torch.jit.load(path)(check) - encoder(check)).abs().max())


def export_program(encoder, path, chunk_size):
    """``torch.export`` of the plain-layer encoder (any batch size); returns the parity error.

    TorchScript is deprecated in recent PyTorch; ``torch.export.load(path).module()`` is its successor.
    """
    plain = plain_copy(encoder)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(plain, (torch.randn(2, chunk_size),), dynamic_shapes={"chunks": {0: batch}})
    torch.export.save(program, path)
    check = torch.randn(5, chunk_size)
    with torch.no_grad():
        return float((torch.export.load(path).module()(check) - encoder(check)).abs().max())


def relative_error(output, reference):
    """Largest ``|output - reference| / |reference|`` over the rows (L2 norms)."""
    output, reference = np.asarray(output, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    norms = np.linalg.norm(reference, axis=1).clip(min=1e-12)
    return float((np.linalg.norm(output - reference, axis=1) / norms).max())


def export_onnx(encoder, path, chunk_size, check_chunks=None):
    """ONNX export of the plain-layer encoder (dynamic batch); returns its relative error.

    The error is that of onnxruntime's output against the eager encoder on
    ``check_chunks`` (default: 5 chunks of noise), see :func:`relative_error`.
    Needs the ``onnx`` extra (``pip install -e ".[onnx]"``; ``.[dev]`` includes it).
    """
    import onnxruntime

    plain = plain_copy(encoder)
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(plain, (torch.randn(2, chunk_size),), path, input_names=["chunks"],
                      output_names=["embeddings"], dynamic_shapes={"chunks": {0: batch}}, dynamo=True,
                      external_data=False, verbose=False)
    check = torch.randn(5, chunk_size) if check_chunks is None else check_chunks
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    output = session.run(["embeddings"], {"chunks": check.numpy()})[0]
    with torch.no_grad():
        return relative_error(output, encoder(check).numpy())


def onnx_available():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def choose_threshold(experiment, hparams, spec, scores=None, backend="none", normalised=False):
    """``(summary or None, OperatingPoint or None, note)`` for the exported model.

    Without ``scores``, the summary is that of the run's own trials with the
    exported ``backend``, if the run kept them and scored them as the model
    will (``normalised``: the model carries the run's score normalisation).
    """
    if scores is not None:
        summary = summary_of_scores_file(scores)
        source = f"the trials of {scores}"
    else:
        _, scores_file = main_system_scores(experiment, backend)
        summary, source = None, None
        if scores_file and (hparams.get("score_norm") is None or normalised):
            summary = summary_of_scores_file(scores_file)
            source = f"the run's trials ({os.path.basename(scores_file)}, EER {100 * summary['eer']:.2f} %)"
    if summary is None and spec is not None and str(spec).strip().lower() == "eer":
        print(f"no verification scores of the run with back end {backend!r} as the model scores: threshold "
              "left null (verify_files returns no decision); pass --scores or a numeric --threshold")
        return None, None, "No threshold (no scored trials)."
    point = operating_point(summary, spec)
    note = f"Threshold: {describe(point)}" + (f", chosen on {source}." if source else ", given.")
    return summary, point, note


def pack_backend(experiment, system, backend, out_folder):
    """Copies the run's fitted ``backend`` of ``system`` into the model folder (removes a stale one for ``none``)."""
    target = os.path.join(out_folder, BACKEND_FILE)
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r} is unknown; choose one of {list(BACKENDS)}")
    if backend == "none":
        if os.path.isfile(target):
            os.remove(target)
        return
    source = layout.backend_file(experiment, system or "", backend)
    if system is None or not os.path.isfile(source):
        raise FileNotFoundError(
            f"{experiment} holds no fitted {backend!r} back end{' for ' + system if system else ''} ({source}): "
            f"the run needs {backend} in verification_backends and its system in save_scores; "
            "or export with --backend none")
    Backend.load(source)  # readable, or a clear error now rather than when the model is used
    shutil.copyfile(source, target)


def pack_cohort(experiment, system, backend, hparams, out_folder, carry=True):
    """Copies the run's score-normalisation cohort; returns ``(score_norm, top_k)`` the model applies."""
    target = os.path.join(out_folder, COHORT_FILE)
    if os.path.isfile(target):
        os.remove(target)
    method = hparams.get("score_norm")
    if method is None or not carry:
        return None, None
    source = layout.cohort_file(experiment, system or "", backend)
    if system is None or not os.path.isfile(source):
        raise FileNotFoundError(
            f"the run normalised its scores ({method}) but {source} is missing: rerun its verification "
            "stage, or export with --no_score_norm")
    shutil.copyfile(source, target)
    return method, hparams.get("cohort_top_k") if method == "as-norm" else None


def export(experiment, out_folder, stage=None, threshold="eer", traced=True, scores=None, backend=None,
           score_norm=True):
    """Writes the inference folder; returns a summary dict.

    ``threshold`` is an operating point (``"eer"``, ``"far=0.01"``,
    ``"frr=0.05"``) or a score; ``scores`` a scores file to choose it on
    (default: the experiment's own trials with the exported back end).
    ``backend``: one of :data:`sincmi.backend.BACKENDS` (default: the yaml's
    ``export_backend``, else ``none``). ``score_norm``: carry the run's score
    normalisation and cohort, when it has one.
    """
    hparams_file = os.path.join(experiment, "hyperparams.yaml")
    if not os.path.isfile(hparams_file):
        raise FileNotFoundError(f"{hparams_file} is missing: pass the output_folder of a recipe run")
    with open(hparams_file) as f:
        hparams = load_hyperpyyaml(f)
    encoder = hparams["encoder"]
    if not isinstance(encoder, SincNetEncoder):
        raise TypeError(f"the experiment's encoder is a {type(encoder).__name__}, not a SincNetEncoder")
    backend = backend or hparams.get("export_backend") or "none"
    system = main_system(experiment)
    os.makedirs(out_folder, exist_ok=True)
    pack_backend(experiment, system, backend, out_folder)
    method, top_k = pack_cohort(experiment, system, backend, hparams, out_folder, score_norm)
    summary_scores, point, threshold_note = choose_threshold(experiment, hparams, threshold, scores, backend,
                                                             normalised=method is not None)
    # save_folder may be relative to where the run started: prefer the experiment's own.
    save_folder = os.path.join(experiment, "save")
    if not os.path.isdir(save_folder):
        save_folder = hparams["save_folder"]
    stage, checkpoint = find_stage_checkpoint(save_folder, stage)
    shutil.copyfile(os.path.join(checkpoint, "encoder.ckpt"), os.path.join(out_folder, "encoder.ckpt"))
    summary = {"experiment": experiment, "stage": stage, "checkpoint": str(checkpoint), "system": system,
               "backend": backend, "score_norm": method}
    classifier = os.path.join(checkpoint, "classifier.ckpt")
    labels = os.path.join(save_folder, layout.LABEL_ENCODER_FILE)
    if os.path.isfile(classifier) and os.path.isfile(labels):
        shutil.copyfile(classifier, os.path.join(out_folder, "classifier.ckpt"))
        shutil.copyfile(labels, os.path.join(out_folder, layout.LABEL_ENCODER_FILE))
        summary["classifier"] = True

    summary_path = os.path.join(out_folder, SUMMARY_FILE)
    if summary_scores is not None:
        with open(summary_path, "w") as f:
            json.dump(summary_scores, f)
        summary["eer"] = summary_scores["eer"]
    elif os.path.isfile(summary_path):
        os.remove(summary_path)  # a stale one from an earlier export into this folder
    summary["threshold"] = None if point is None else point.threshold
    summary["operating_point"] = None if point is None else point._asdict()
    note = f"Exported from {experiment} ({stage} checkpoint, back end {backend}). {threshold_note}"
    shift = hparams.get("verification_shift") or hparams.get("eval_shift") or encoder.chunk_size // 2
    normalize_peak = bool(hparams.get("normalize_peak", False))
    config = copy.deepcopy(encoder.config)
    with open(os.path.join(out_folder, "hyperparams.yaml"), "w") as f:
        f.write(inference_yaml(config, shift, normalize_peak, summary["threshold"], note,
                               None if point is None else point.name, backend, method, top_k))

    if traced:
        state = torch.load(os.path.join(out_folder, "encoder.ckpt"), map_location="cpu", weights_only=True)
        encoder.load_state_dict(state)
        encoder.eval()
        path = os.path.join(out_folder, "encoder_torchscript.pt")
        summary["torchscript_max_abs_diff"] = export_torchscript(encoder, path, encoder.chunk_size)
        path = os.path.join(out_folder, "encoder.pt2")
        summary["torch_export_max_abs_diff"] = export_program(encoder, path, encoder.chunk_size)
        if onnx_available():
            path = os.path.join(out_folder, ONNX_FILE)
            summary["onnx_relative_error"] = export_onnx(encoder, path, encoder.chunk_size)
            with open(os.path.join(out_folder, ONNX_CONFIG_FILE), "w") as f:
                json.dump({"input": "chunks", "output": "embeddings", "sample_rate": config["sample_rate"],
                           "chunk_size": encoder.chunk_size, "shift": shift, "normalize_peak": normalize_peak,
                           "backend": None if backend == "none" else BACKEND_FILE,
                           "score_norm": method, "cohort": COHORT_FILE if method else None, "cohort_top_k": top_k,
                           "threshold": summary["threshold"]}, f, indent=2)
        else:
            summary["onnx"] = 'skipped: install the onnx extra (pip install -e ".[onnx]")'
    return summary


def set_threshold(model_folder, summary, point):
    """Stores a new operating point in an exported model folder (and the trials' summary)."""
    hparams_path = os.path.join(model_folder, "hyperparams.yaml")
    with open(hparams_path) as f:
        text = f.read()
    for line in threshold_lines(point.threshold, point.name).splitlines():
        key = line.split(":", 1)[0]
        text, found = re.subn(rf"^{key}:.*$", line, text, count=1, flags=re.M)
        if not found:  # a folder exported before operating points were stored
            text = text.replace("\nencoder: !new:", f"\n{line}\n\nencoder: !new:", 1)
    with open(os.path.join(model_folder, SUMMARY_FILE), "w") as f:
        json.dump(summary, f)
    with open(hparams_path, "w") as f:
        f.write(text)
    config = os.path.join(model_folder, ONNX_CONFIG_FILE)
    if os.path.isfile(config):
        with open(config) as f:
            settings = json.load(f)
        settings["threshold"] = point.threshold
        with open(config, "w") as f:
            json.dump(settings, f, indent=2)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sincmi export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="output_folder of a recipe run (holds hyperparams.yaml)")
    parser.add_argument("out_folder")
    parser.add_argument("--stage", choices=layout.EXPORT_ORDER, help="default: the final stage")
    parser.add_argument("--threshold", default="eer", help=f"operating point: {SPEC_HELP} (default: eer)")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="back end applied to utterance embeddings (default: the yaml's export_backend)")
    parser.add_argument("--no_score_norm", action="store_true",
                        help="leave out the run's score normalisation and its cohort (raw cosine scores)")
    parser.add_argument("--scores", help="scores file ('enrol test score label' lines) to choose the threshold on "
                                         "(default: the run's own verification trials)")
    parser.add_argument("--no_traced", action="store_true", help="skip the TorchScript, torch.export and ONNX files")
    args = parser.parse_args(argv)
    try:
        summary = export(args.experiment, args.out_folder, args.stage, args.threshold, not args.no_traced,
                         args.scores, args.backend, not args.no_score_norm)
    except (FileNotFoundError, TypeError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
