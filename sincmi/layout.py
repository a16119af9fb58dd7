"""Where a recipe run keeps its things: the one home of the stage, folder, file and key names.

A run's ``output_folder`` holds ``results.json``, one ``scores_<system>.txt.gz`` per
verification system (and back end) and ``save/<stage>/CKPT+...`` checkpoints.
The training stages, the export and the tools all find them through here.

>>> scores_file("results/x", "LIM (nce)", "whiten")
'results/x/scores_lim_nce_whiten.txt.gz'
>>> stage_folder("results/x/save", PRETRAIN)
'results/x/save/pretrain'
"""

import os
import re

PRETRAIN = "pretrain"      # LIM pretraining
SPEAKER_ID = "speaker_id"  # speaker identification (TIMIT, LibriSpeech, Demo)
FINETUNE = "finetune"      # supervised fine-tuning before verification (VoxCeleb)
PSEUDO_LABELS = "pseudo_labels"  # fine-tuning on clusters of LIM's embeddings (pseudo_labels_<round>)

# Stages an exported model is taken from, the final one first.
EXPORT_ORDER = (SPEAKER_ID, FINETUNE, PRETRAIN)

RESULTS_FILE = "results.json"
TRIALS_FILE = "trials.txt"
LABEL_ENCODER_FILE = "label_encoder.txt"
HPARAMS_FILE = "hyperparams.yaml"  # a run's resolved hparams, and a model folder's inference hparams
ENCODER_FILE, CLASSIFIER_FILE = "encoder.ckpt", "classifier.ckpt"  # in checkpoints and model folders

# A model folder (python -m sincmi export): every file SpeechBrain's Pretrainer fetches is <loadable>.ckpt ...
BACKEND_FILE, COHORT_FILE, CALIBRATION_FILE = "backend.ckpt", "cohort.ckpt", "calibration.ckpt"
SUMMARY_FILE, LABELS_FILE = "score_summary.ckpt", "label_encoder.ckpt"
# ... and the encoder for other runtimes.
TORCHSCRIPT_FILE, PROGRAM_FILE = "encoder_torchscript.pt", "encoder.pt2"
ONNX_FILE, ONNX_CONFIG_FILE = "encoder.onnx", "encoder_onnx.json"
MODEL_FILES = (HPARAMS_FILE, ENCODER_FILE, BACKEND_FILE, COHORT_FILE, CALIBRATION_FILE, SUMMARY_FILE,
               CLASSIFIER_FILE, LABELS_FILE, TORCHSCRIPT_FILE, PROGRAM_FILE, ONNX_FILE, ONNX_CONFIG_FILE)
RUN_CALIBRATION_FILE = "calibration_run.ckpt"  # the run's calibration, kept when threshold --calibrate replaces it
PRETRAINING_DATA_FILE = "pretraining_data.json"  # in save_folder: what LIM pretrained on


def best_checkpoint_key(stage):
    """The validation statistic ``stage`` keeps its best checkpoint by (lower is better):
    LIM's loss, or the sentence error of every speaker-classifier stage
    (``speaker_id``, ``finetune``, the Demo's baseline probes).

    >>> best_checkpoint_key(PRETRAIN), best_checkpoint_key("speaker_id_mfcc")
    ('loss', 'sentence_error')
    """
    return "loss" if stage == PRETRAIN else "sentence_error"


def stage_folder(save_folder, stage):
    """The checkpoint folder of ``stage`` in a run's ``save_folder``."""
    return os.path.join(save_folder, stage)


def experiment_stage_folder(experiment, stage):
    """The checkpoint folder of ``stage`` in a run's ``output_folder``."""
    return stage_folder(os.path.join(experiment, "save"), stage)


def file_slug(name):
    """A system name as a file-name part: ``"LIM (nce)"`` -> ``"lim_nce"``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def backend_file(folder, system, backend):
    """The fitted back end of ``system`` in a run's output folder (:meth:`sincmi.backend.Backend.save`).

    >>> backend_file("results/x", "LIM (nce)", "whiten")
    'results/x/save/backends/lim_nce_whiten.npz'
    """
    return os.path.join(folder, "save", "backends", f"{file_slug(system)}_{backend}.npz")


def calibration_file(folder, system, backend="none"):
    """The score calibration of ``system`` with ``backend`` in a run's output folder.

    >>> calibration_file("results/x", "LIM (nce)", "whiten")
    'results/x/save/calibration/lim_nce_whiten.json'
    """
    return os.path.join(folder, "save", "calibration", f"{file_slug(system)}_{backend}.json")


def cohort_file(folder, system, backend="none"):
    """The score-normalisation cohort of ``system`` (embeddings after ``backend``) in a run's output folder."""
    suffix = "" if backend == "none" else f"_{backend}"
    return os.path.join(folder, "save", "cohort", f"{file_slug(system)}{suffix}.npz")


def scores_file(folder, system, backend="none"):
    """The scores file of ``system`` (with ``backend``) in a run's output folder."""
    suffix = "" if backend == "none" else f"_{backend}"
    return os.path.join(folder, f"scores_{file_slug(system)}{suffix}.txt.gz")
