#!/usr/bin/env python3
"""Packs a finished experiment into a folder that ``SpeakerEncoder.from_hparams`` loads.

The folder holds:

* ``encoder.ckpt``: the encoder of the experiment's final stage (the speaker-id
  or fine-tuning stage's best validation checkpoint, else LIM pretraining's);
* ``hyperparams.yaml``: the inference hyperparameters (encoder configuration,
  sample rate, chunk hop, peak normalisation, decision threshold);
* ``classifier.ckpt`` and ``label_encoder.txt`` when the stage has a speaker
  classifier;
* ``encoder_torchscript.pt``: the encoder traced with TorchScript, and
  ``encoder.pt2``: the same with ``torch.export`` (TorchScript's successor), both
  checked against the eager model on the spot; ``encoder.onnx`` when the
  ``onnx`` package is installed.

The threshold is the EER threshold of the experiment's verification trials
(its ``scores_<system>.txt``, raw cosine scores); give ``--threshold`` when the
experiment has no such file or normalised its scores.

Usage:
    python tools/export_model.py results/Demo/lim_nce/1234 pretrained/demo_lim
"""

import argparse
import copy
import json
import os
import shutil
import sys

import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.checkpoints import Checkpointer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sincmi.encoder import SincNetEncoder  # noqa: E402
from sincmi.metrics import _eer_from_curves, error_curves, read_scores  # noqa: E402
from sincmi.stages import file_slug  # noqa: E402

# Stage folders in the order they are preferred, with the key of their best checkpoint.
STAGES = [("speaker_id", "sentence_error"), ("finetune", "sentence_error"), ("pretrain", "loss")]


def find_stage_checkpoint(save_folder, stage=None):
    """Returns ``(stage, checkpoint folder)`` of the final (or the named) stage."""
    for name, key in STAGES:
        if stage not in (None, name):
            continue
        folder = os.path.join(save_folder, name)
        if os.path.isdir(folder):
            checkpoint = Checkpointer(folder).find_checkpoint(min_key=key)
            if checkpoint is not None:
                return name, checkpoint.path
    wanted = stage or " or ".join(name for name, _ in STAGES)
    raise FileNotFoundError(
        f"{save_folder} holds no {wanted} checkpoint (CKPT+... folder): pass the output_folder of a "
        "finished recipe run"
    )


def eer_threshold(scores_file):
    """``(EER, threshold)`` of a ``enrol test score label`` file."""
    targets, nontargets = read_scores(scores_file)
    if not len(targets) or not len(nontargets):
        raise ValueError(f"{scores_file} needs both target and non-target trials")
    return _eer_from_curves(*error_curves(targets, nontargets))


def main_system_scores(experiment):
    """The scores file of the experiment's first (main) system, if any."""
    results_file = os.path.join(experiment, "results.json")
    if not os.path.isfile(results_file):
        return None, None
    with open(results_file) as f:
        systems = list(json.load(f).get("systems", {}))
    if not systems:
        return None, None
    path = os.path.join(experiment, f"scores_{file_slug(systems[0])}.txt")
    return systems[0], path if os.path.isfile(path) else None


def inference_yaml(config, shift, normalize_peak, threshold, note):
    """Text of the inference hyperparams file."""
    encoder_args = "\n".join(f"    {key}: {json.dumps(value)}" for key, value in config.items())
    threshold_text = "null" if threshold is None else f"{threshold:.6f}"
    return f"""# ############################################################################
# sincmi inference model: SincNet encoder -> utterance embeddings (mean of the
# L2-normalised embeddings of chunk_size-sample chunks taken every `shift` samples).
# Load with: sincmi.inference.SpeakerEncoder.from_hparams(source=<this folder>)
# {note}
# ############################################################################

sample_rate: {config["sample_rate"]}
shift: {shift}                      # hop between chunks, samples
normalize_peak: {normalize_peak}           # scale each file to unit peak first (as in training)
threshold: {threshold_text}              # cosine score >= threshold: same speaker

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


def export_onnx(encoder, path, chunk_size):
    """ONNX export of the plain-layer encoder when ``onnx`` is installed; returns a note."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        return "skipped: the onnx package is not installed"
    plain = plain_copy(encoder)
    torch.onnx.export(plain, (torch.randn(2, chunk_size),), path, input_names=["chunks"],
                      output_names=["embeddings"], dynamic_axes={"chunks": {0: "batch"}})
    return f"written {path}"


def export(experiment, out_folder, stage=None, threshold=None, torchscript=True):
    """Writes the inference folder; returns a summary dict."""
    hparams_file = os.path.join(experiment, "hyperparams.yaml")
    if not os.path.isfile(hparams_file):
        raise FileNotFoundError(f"{hparams_file} is missing: pass the output_folder of a recipe run")
    with open(hparams_file) as f:
        hparams = load_hyperpyyaml(f)
    encoder = hparams["encoder"]
    if not isinstance(encoder, SincNetEncoder):
        raise TypeError(f"the experiment's encoder is a {type(encoder).__name__}, not a SincNetEncoder")
    # save_folder may be relative to where the run started: prefer the experiment's own.
    save_folder = os.path.join(experiment, "save")
    if not os.path.isdir(save_folder):
        save_folder = hparams["save_folder"]
    stage, checkpoint = find_stage_checkpoint(save_folder, stage)
    os.makedirs(out_folder, exist_ok=True)
    shutil.copyfile(os.path.join(checkpoint, "encoder.ckpt"), os.path.join(out_folder, "encoder.ckpt"))
    summary = {"experiment": experiment, "stage": stage, "checkpoint": str(checkpoint)}
    classifier = os.path.join(checkpoint, "classifier.ckpt")
    labels = os.path.join(save_folder, "label_encoder.txt")
    if os.path.isfile(classifier) and os.path.isfile(labels):
        shutil.copyfile(classifier, os.path.join(out_folder, "classifier.ckpt"))
        shutil.copyfile(labels, os.path.join(out_folder, "label_encoder.txt"))
        summary["classifier"] = True

    note = f"Exported from {experiment} ({stage} checkpoint)."
    if threshold is None:
        system, scores_file = main_system_scores(experiment)
        if scores_file and hparams.get("score_norm") is None:
            eer, threshold = eer_threshold(scores_file)
            note += f" Threshold: EER threshold of {os.path.basename(scores_file)} (EER {100 * eer:.2f} %)."
            summary["eer"] = eer
        else:
            print("no raw-cosine verification scores in the experiment: threshold left null "
                  "(verify_files returns no decision); pass --threshold to set one")
    else:
        note += " Threshold given on the command line."
    summary["threshold"] = threshold
    shift = hparams.get("verification_shift") or hparams.get("eval_shift") or encoder.chunk_size // 2
    config = copy.deepcopy(encoder.config)
    with open(os.path.join(out_folder, "hyperparams.yaml"), "w") as f:
        f.write(inference_yaml(config, shift, bool(hparams.get("normalize_peak", False)), threshold, note))

    if torchscript:
        state = torch.load(os.path.join(out_folder, "encoder.ckpt"), map_location="cpu", weights_only=True)
        encoder.load_state_dict(state)
        encoder.eval()
        path = os.path.join(out_folder, "encoder_torchscript.pt")
        summary["torchscript_max_abs_diff"] = export_torchscript(encoder, path, encoder.chunk_size)
        path = os.path.join(out_folder, "encoder.pt2")
        summary["torch_export_max_abs_diff"] = export_program(encoder, path, encoder.chunk_size)
        summary["onnx"] = export_onnx(encoder, os.path.join(out_folder, "encoder.onnx"), encoder.chunk_size)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="output_folder of a recipe run (holds hyperparams.yaml)")
    parser.add_argument("out_folder")
    parser.add_argument("--stage", choices=[name for name, _ in STAGES], help="default: the final stage")
    parser.add_argument("--threshold", type=float, help="decision threshold on the cosine score")
    parser.add_argument("--no_torchscript", action="store_true")
    args = parser.parse_args(argv)
    try:
        summary = export(args.experiment, args.out_folder, args.stage, args.threshold, not args.no_torchscript)
    except (FileNotFoundError, TypeError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
