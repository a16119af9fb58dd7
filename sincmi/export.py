"""Packs a finished experiment into a model folder: SpeechBrain-loadable, self-contained.

Every file the model needs is a loadable of the ``pretrainer`` in its
``hyperparams.yaml``, named ``<loadable>.ckpt``, so that ``SpeakerEncoder``,
SpeechBrain's ``EncoderClassifier`` and ``SpeakerRecognition`` load it from the
folder itself or, with a ``savedir``, from any source SpeechBrain can fetch:

* ``encoder.ckpt``: the encoder of the experiment's final stage (the speaker-id
  or fine-tuning stage's best validation checkpoint, else LIM pretraining's);
* ``backend.ckpt``: the verification back end (``--backend``; default: the
  yaml's ``export_backend``), fitted in the run on the training speakers'
  utterances without labels;
* ``cohort.ckpt``: with the run's score normalisation (``score_norm``, the
  VoxCeleb recipe), its cohort (``--no_score_norm`` leaves it out);
* ``calibration.ckpt``: the run's score calibration for that back end
  (:mod:`sincmi.calibration`), when the model scores as the run did;
* ``score_summary.ckpt``: the error curves of the run's verification trials
  with that back end (and normalisation), or of ``--scores``, from which
  ``--threshold`` (and later ``verify_files(..., threshold="far=0.01")``) picks
  an operating point;
* ``classifier.ckpt`` and ``label_encoder.ckpt`` when the stage has a speaker classifier.

Beside them, for other runtimes: ``encoder_torchscript.pt`` (TorchScript),
``encoder.pt2`` (``torch.export``) and ``encoder.onnx`` with ``encoder_onnx.json``
(its settings, for onnxruntime without PyTorch: :mod:`sincmi.onnx_embed`),
each checked against the eager encoder on the spot.

The summary comes from the scores of the experiment's first system with the
exported back end (``scores_<system>[_<back end>].txt.gz``); a run without
them (or whose normalisation is left out) needs ``--scores`` (a file of
``enrol test score label`` lines of trials you scored) or a numeric
``--threshold``. The files are written into a staging folder and moved in
once all are ready: a refused export leaves the output folder as it was.

Usage:
    python -m sincmi export results/Demo/lim_nce/1234 pretrained/demo_lim
    python -m sincmi export results/Demo/lim_nce/1234 pretrained/demo_lim --backend none --threshold far=0.01
"""

import argparse
import copy
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings

import numpy as np
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.checkpoints import Checkpointer

from sincmi import layout
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.dataio.preprocess import AudioNormalizer

from sincmi.backend import BACKENDS, Backend
from sincmi.calibration import Calibration
from sincmi.config import check_encoder
from sincmi.encoder import SincNetEncoder, default_shift
from sincmi.inference import SentenceClassifier, Unchanged, UnitLength, UtteranceEmbedder, WaveformScaling
from sincmi.scoring import read_scores
from sincmi.thresholds import SPEC_HELP, ScoreSummary, describe, operating_point, score_summary

from sincmi.layout import (BACKEND_FILE, CALIBRATION_FILE, CLASSIFIER_FILE, COHORT_FILE, ENCODER_FILE, HPARAMS_FILE,
                           LABELS_FILE, MODEL_FILES, ONNX_CONFIG_FILE, ONNX_FILE, PROGRAM_FILE, SUMMARY_FILE,
                           RUN_CALIBRATION_FILE, TORCHSCRIPT_FILE)


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
            f"operating_point: {point_text}        # how the threshold was chosen (see score_summary.ckpt)")


def yaml_block(key, cls, arguments=None):
    """A ``key: !new:module.Class`` block with its arguments (JSON values or ``!ref``)."""
    lines = [f"{key}: !new:{cls.__module__}.{cls.__qualname__}"]
    for name, value in (arguments or {}).items():
        text = value if isinstance(value, str) and value.startswith("!ref") else json.dumps(value)
        lines.append(f"    {name}: {text}")
    return "\n".join(lines)


def inference_yaml(encoder, shift, normalize_peak, threshold, note, operating_point_name=None, parts=(),
                   score_norm=None, top_k=None, classifier=None, p_target=0.01):
    """Text of the inference hyperparams file.

    ``parts``: the loadable files the folder holds besides ``encoder.ckpt``
    (``backend``, ``cohort``, ``calibration``, ``score_summary``, ``classifier``
    and ``label_encoder``); ``classifier``: ``(class, arguments)`` of the head.
    """
    from sincmi.scoring import Cohort

    sample_rate = encoder.config["sample_rate"]
    blocks = [yaml_block("encoder", type(encoder), encoder.config),
              yaml_block("backend", Backend, {"name": "none"}) + "   # the fitted one: backend.ckpt",
              yaml_block("cohort", Cohort, {"method": score_norm, "top_k": top_k}),
              yaml_block("calibration", Calibration), yaml_block("score_summary", ScoreSummary),
              "# SpeechBrain's EncoderClassifier and SpeakerRecognition pipeline",
              yaml_block("audio_normalizer", AudioNormalizer, {"sample_rate": sample_rate}),
              yaml_block("compute_features", WaveformScaling, {"normalize_peak": normalize_peak}),
              yaml_block("mean_var_norm", Unchanged), yaml_block("mean_var_norm_emb", UnitLength),
              yaml_block("embedding_model", UtteranceEmbedder,
                         {"encoder": "!ref <encoder>", "shift": "!ref <shift>", "backend": "!ref <backend>",
                          "sample_rate": "!ref <sample_rate>"})]
    modules = ["compute_features", "mean_var_norm", "embedding_model", "mean_var_norm_emb"]
    if classifier is not None:
        blocks += [yaml_block("classifier_head", *classifier),
                   yaml_block("classifier", SentenceClassifier,
                              {"head": "!ref <classifier_head>", "embedder": "!ref <embedding_model>"}),
                   yaml_block("label_encoder", CategoricalEncoder)]
        modules.append("classifier")
    loadables = {"encoder": "encoder", "classifier": "classifier_head"}
    loadables = ["        encoder: !ref <encoder>"] + [
        f"        {name}: !ref <{loadables.get(name, name)}>" for name in parts]
    module_lines = "\n".join(f"    {name}: !ref <{name}>" for name in modules)
    return f"""# ############################################################################
# sincmi speaker model: chunk encoder -> utterance embeddings (mean of the
# L2-normalised embeddings of chunk_size-sample chunks taken every `shift` samples,
# then the back end) -> cosine score (then the score normalisation, if any)
# -> log-likelihood ratio (the calibration, if any).
# Load with sincmi.inference.SpeakerEncoder.from_hparams(source=<this folder>), or
# SpeechBrain's EncoderClassifier / SpeakerRecognition.from_hparams(source=..., savedir=...).
# {note}
# ############################################################################

sample_rate: {sample_rate}
shift: {shift}                      # hop between chunks, samples
normalize_peak: {normalize_peak}           # scale each file to unit peak first (as in training)
p_target: {p_target}                  # prior of the Bayes decision on calibrated scores
{threshold_lines(threshold, operating_point_name)}

{chr(10).join(blocks)}

modules:
    encoder: !ref <encoder>
{module_lines}

# Every file the model needs, fetched as <name>.ckpt from the source.
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
{chr(10).join(loadables)}
"""


def plain_copy(encoder):
    """The encoder to trace, same weights, in eval mode: a SincNet encoder with its plain layers
    (``implementation: reference``; the fast kernels, a custom autograd function and loops over
    micro-batches, do not trace, the plain layers compute the same function), any other as it is."""
    if not isinstance(encoder, SincNetEncoder):
        return copy.deepcopy(encoder).eval()
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


def pack_backend(experiment, system, backend, staging):
    """Copies the run's fitted ``backend`` of ``system`` into the staging folder (nothing for ``none``)."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r} is unknown; choose one of {list(BACKENDS)}")
    if backend == "none":
        return
    source = layout.backend_file(experiment, system or "", backend)
    if system is None or not os.path.isfile(source):
        raise FileNotFoundError(
            f"{experiment} holds no fitted {backend!r} back end{' for ' + system if system else ''} ({source}): "
            f"the run needs {backend} in verification_backends and its system in save_scores; "
            "or export with --backend none")
    Backend.load(source)  # readable, or a clear error now rather than when the model is used
    shutil.copyfile(source, os.path.join(staging, BACKEND_FILE))


def pack_cohort(experiment, system, backend, hparams, staging, carry=True):
    """Copies the run's score-normalisation cohort; returns ``(score_norm, top_k)`` the model applies."""
    method = hparams.get("score_norm")
    if method is None or not carry:
        return None, None
    source = layout.cohort_file(experiment, system or "", backend)
    if system is None or not os.path.isfile(source):
        raise FileNotFoundError(
            f"the run normalised its scores ({method}) but {source} is missing: rerun its verification "
            "stage, or export with --no_score_norm")
    shutil.copyfile(source, os.path.join(staging, COHORT_FILE))
    if method != "as-norm":
        return method, None
    with np.load(source) as arrays:  # a cohort smaller than cohort_top_k was used whole, as the run did
        return method, min(hparams.get("cohort_top_k"), len(arrays["embeddings"]))


def pack_calibration(experiment, system, backend, staging, normalised_as_run):
    """Copies the run's calibration of ``system`` with ``backend``; returns it (None without one).

    A calibration fits the scores as the run computed them: left out when the
    model drops the run's score normalisation.
    """
    source = layout.calibration_file(experiment, system or "", backend)
    if system is None or not normalised_as_run or not os.path.isfile(source):
        return None
    calibration = Calibration.from_file(source)
    shutil.copyfile(source, os.path.join(staging, CALIBRATION_FILE))
    return calibration


def pack_classifier(hparams, checkpoint, save_folder, encoder, staging):
    """Copies the stage's speaker classifier and labels; returns ``(class, arguments)`` of the head, or None."""
    classifier = os.path.join(checkpoint, CLASSIFIER_FILE)
    labels = os.path.join(save_folder, layout.LABEL_ENCODER_FILE)
    make = hparams.get("classifier")
    if not (os.path.isfile(classifier) and os.path.isfile(labels) and hasattr(make, "func")):
        return None
    encoder_labels = CategoricalEncoder()
    encoder_labels.load(labels)
    shutil.copyfile(classifier, os.path.join(staging, CLASSIFIER_FILE))
    shutil.copyfile(labels, os.path.join(staging, LABELS_FILE))
    arguments = {**make.keywords, "input_size": encoder.embedding_size, "num_speakers": len(encoder_labels)}
    return make.func, {key: list(v) if isinstance(v, tuple) else v for key, v in arguments.items()}


def read_experiment(experiment):
    """The hparams of a recipe run's output folder; one-line errors for anything else."""
    hparams_file = os.path.join(experiment, HPARAMS_FILE)
    if not os.path.isdir(experiment):
        raise FileNotFoundError(f"{experiment} does not exist: pass the output_folder of a recipe run")
    if not os.path.isfile(hparams_file):
        raise FileNotFoundError(f"{hparams_file} is missing: pass the output_folder of a recipe run")
    if is_model_folder(experiment):
        raise ValueError(f"{experiment} is an exported model, not a recipe run: pass the run's output_folder "
                         "(export makes a model from a run)")
    # The run's train logger is built and unused here: its import-time warning (no torchvision) is noise.
    logging.getLogger("speechbrain.utils.train_logger").addFilter(lambda record: "torchvision" not in record.getMessage())
    with open(hparams_file) as f:
        return load_hyperpyyaml(f)


def is_model_folder(folder):
    """True for a folder written by :func:`export` (its hyperparams declare a pretrainer)."""
    path = os.path.join(folder, HPARAMS_FILE)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return any(line.startswith("pretrainer:") for line in f)


def check_output_folder(out_folder):
    """Refuses an output folder that holds something other than an exported model (a run, other files)."""
    if os.path.exists(out_folder) and not os.path.isdir(out_folder):
        raise ValueError(f"{out_folder} is a file: give a folder for the model")
    if os.path.isdir(out_folder) and os.listdir(out_folder) and not is_model_folder(out_folder):
        raise ValueError(f"{out_folder} is not empty and holds no exported model: choose a new folder "
                         "(export writes only into an empty folder or over an earlier export)")


def export(experiment, out_folder, stage=None, threshold="eer", traced=True, scores=None, backend=None,
           score_norm=True):
    """Writes the inference folder; returns a summary dict.

    ``threshold`` is an operating point (``"eer"``, ``"far=0.01"``,
    ``"frr=0.05"``) or a score; ``scores`` a scores file to choose it on
    (default: the experiment's own trials with the exported back end).
    ``backend``: one of :data:`sincmi.backend.BACKENDS` (default: the yaml's
    ``export_backend``, else ``none``). ``score_norm``: carry the run's score
    normalisation and cohort, when it has one. Everything is written into a
    staging folder first: a refused export leaves ``out_folder`` as it was.
    """
    hparams = read_experiment(experiment)
    check_output_folder(out_folder)
    encoder = hparams["encoder"]
    check_encoder(encoder, hparams)
    parent = os.path.dirname(os.path.abspath(out_folder))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        summary = stage_model(experiment, hparams, encoder, staging, stage, threshold, traced, scores,
                              backend or hparams.get("export_backend") or "none", score_norm)
        os.makedirs(out_folder, exist_ok=True)
        for name in MODEL_FILES:  # a stale part of an earlier export goes; this export's parts come in
            target = os.path.join(out_folder, name)
            if os.path.isfile(os.path.join(staging, name)):
                os.replace(os.path.join(staging, name), target)
            elif os.path.isfile(target):
                os.remove(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary["folder"] = out_folder
    return summary


def stage_model(experiment, hparams, encoder, staging, stage, threshold, traced, scores, backend, score_norm):
    """Writes every file of the model into ``staging``; returns the export summary."""
    system = main_system(experiment)
    pack_backend(experiment, system, backend, staging)
    method, top_k = pack_cohort(experiment, system, backend, hparams, staging, score_norm)
    normalised_as_run = method is not None or hparams.get("score_norm") is None
    calibration = pack_calibration(experiment, system, backend, staging, normalised_as_run)
    summary_scores, point, threshold_note = choose_threshold(experiment, hparams, threshold, scores, backend,
                                                             normalised=method is not None)
    # save_folder may be relative to where the run started: prefer the experiment's own.
    save_folder = os.path.join(experiment, "save")
    if not os.path.isdir(save_folder):
        save_folder = hparams["save_folder"]
    stage, checkpoint = find_stage_checkpoint(save_folder, stage)
    shutil.copyfile(os.path.join(checkpoint, ENCODER_FILE), os.path.join(staging, ENCODER_FILE))
    summary = {"experiment": experiment, "stage": stage, "checkpoint": str(checkpoint), "system": system,
               "backend": backend, "score_norm": method, "calibrated": calibration is not None}
    classifier = pack_classifier(hparams, checkpoint, save_folder, encoder, staging)
    summary["classifier"] = classifier is not None
    if summary_scores is not None:
        ScoreSummary(summary_scores).save(os.path.join(staging, SUMMARY_FILE))
        summary["eer"] = summary_scores["eer"]
    summary["threshold"] = None if point is None else point.threshold
    summary["operating_point"] = None if point is None else point._asdict()
    parts = [name for name, file in (("backend", BACKEND_FILE), ("cohort", COHORT_FILE),
                                     ("calibration", CALIBRATION_FILE), ("score_summary", SUMMARY_FILE),
                                     ("classifier", CLASSIFIER_FILE), ("label_encoder", LABELS_FILE))
             if os.path.isfile(os.path.join(staging, file))]
    note = f"Exported from {experiment} ({stage} checkpoint, back end {backend}). {threshold_note}"
    shift = hparams.get("verification_shift") or hparams.get("eval_shift") or default_shift(encoder.chunk_size)
    normalize_peak = bool(hparams.get("normalize_peak", False))
    p_target = hparams.get("p_target", 0.01)
    with open(os.path.join(staging, HPARAMS_FILE), "w") as f:
        f.write(inference_yaml(encoder, shift, normalize_peak, summary["threshold"], note,
                               None if point is None else point.name, parts, method, top_k, classifier, p_target))
    if traced:
        summary.update(export_traced(encoder, staging, shift, normalize_peak, backend, method, top_k,
                                     summary["threshold"], calibration, p_target))
    return summary


def traced_copy(key, exporter, encoder, path):
    """``{key: parity error}`` of one traced copy, or ``{key: "skipped: <why>"}`` when the encoder does not
    trace that way (no file is left then): any encoder exports what it allows."""
    try:
        return {key: exporter(encoder, path, encoder.chunk_size)}
    except Exception as error:  # each tracer raises its own types
        if os.path.exists(path):
            os.remove(path)
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        return {key: f"skipped: {type(error).__name__}: {reason}"}


def export_traced(encoder, staging, shift, normalize_peak, backend, method, top_k, threshold, calibration, p_target):
    """TorchScript, ``torch.export`` and ONNX copies of the staged encoder; returns their parity errors.

    The tracers' warnings (constant shapes, TorchScript's deprecation, torchvision absent) are silenced:
    each copy is checked against the eager encoder instead.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        return _export_traced(encoder, staging, shift, normalize_peak, backend, method, top_k, threshold,
                              calibration, p_target)


def _export_traced(encoder, staging, shift, normalize_peak, backend, method, top_k, threshold, calibration, p_target):
    state = torch.load(os.path.join(staging, ENCODER_FILE), map_location="cpu", weights_only=True)
    encoder.load_state_dict(state)
    encoder.eval()
    errors = {}
    for key, exporter, name in (("torchscript_max_abs_diff", export_torchscript, TORCHSCRIPT_FILE),
                                ("torch_export_max_abs_diff", export_program, PROGRAM_FILE)):
        errors.update(traced_copy(key, exporter, encoder, os.path.join(staging, name)))
    if not onnx_available():
        errors["onnx"] = 'skipped: install the onnx extra (pip install -e ".[onnx]")'
        return errors
    errors.update(traced_copy("onnx_relative_error", export_onnx, encoder, os.path.join(staging, ONNX_FILE)))
    if not os.path.isfile(os.path.join(staging, ONNX_FILE)):
        return errors
    with open(os.path.join(staging, ONNX_CONFIG_FILE), "w") as f:
        json.dump({"input": "chunks", "output": "embeddings", "sample_rate": encoder.config["sample_rate"],
                   "chunk_size": encoder.chunk_size, "shift": shift, "normalize_peak": normalize_peak,
                   "backend": None if backend == "none" else BACKEND_FILE,
                   "score_norm": method, "cohort": COHORT_FILE if method else None, "cohort_top_k": top_k,
                   "calibration": None if calibration is None else onnx_calibration(calibration),
                   "p_target": p_target, "threshold": threshold}, f, indent=2)
    return errors


def onnx_calibration(calibration):
    """The calibration as the ONNX runner's config holds it: ``llr = scale * f(score) + offset``."""
    return {"scale": calibration.scale, "offset": calibration.offset, "transform": calibration.transform}


def update_onnx_config(model_folder, **settings):
    """Writes ``settings`` into the folder's ``encoder_onnx.json``, when it has one."""
    config = os.path.join(model_folder, ONNX_CONFIG_FILE)
    if os.path.isfile(config):
        with open(config) as f:
            values = json.load(f)
        values.update(settings)
        with open(config, "w") as f:
            json.dump(values, f, indent=2)


def with_loadable(text, name):
    """A model's hyperparams text with ``name`` among its pretrainer's loadables (the list ends the file)."""
    line = f"        {name}: !ref <{name}>"
    return text if line in text else text.rstrip("\n") + f"\n{line}\n"


def set_threshold(model_folder, point, summary=None):
    """Stores a new operating point in an exported model folder; with ``summary``, also the trials' summary."""
    hparams_path = os.path.join(model_folder, HPARAMS_FILE)
    with open(hparams_path) as f:
        text = f.read()
    for line in threshold_lines(point.threshold, point.name).splitlines():
        key = line.split(":", 1)[0]
        text = re.sub(rf"^{key}:.*$", line, text, count=1, flags=re.M)
    if summary is not None:
        ScoreSummary(summary).save(os.path.join(model_folder, SUMMARY_FILE))
        text = with_loadable(text, "score_summary")
    with open(hparams_path, "w") as f:
        f.write(text)
    update_onnx_config(model_folder, threshold=point.threshold)


def set_calibration(model_folder, calibration):
    """Stores a new calibration in a model folder; the one it replaces is kept as ``calibration_run.ckpt``."""
    path = os.path.join(model_folder, CALIBRATION_FILE)
    kept = os.path.join(model_folder, RUN_CALIBRATION_FILE)
    if os.path.isfile(path) and not os.path.isfile(kept):
        shutil.copyfile(path, kept)
    calibration.save(path)
    hparams_path = os.path.join(model_folder, HPARAMS_FILE)
    with open(hparams_path) as f:
        text = f.read()
    with open(hparams_path, "w") as f:
        f.write(with_loadable(text, "calibration"))
    update_onnx_config(model_folder, calibration=onnx_calibration(calibration))


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
