"""Start-up checks of a recipe's hparams, before any data work.

Each error names the key, the value and what would be valid, so that a
mistyped override fails in a second instead of hours into a run.
"""

import os

import torch

from sincmi import layout
from sincmi.backend import BACKENDS
from sincmi.discriminator import CRITICS
from sincmi.encoder import FC_INITS, IMPLEMENTATIONS, LAYER_NORMS, SincNetEncoder
from sincmi.scoring import SCORE_NORMS

# The choices of pretrain_data (sincmi.stages.pretraining_rows)
PRETRAIN_DATA = ("train", "all", "none")

POSITIVE_INTS = [
    "chunk_size", "pretrain_batch_size", "finetune_batch_size", "eval_batch_size", "eval_shift",
    "sample_rate", "embedding_size", "valid_pairs_per_sentence", "pairs_per_segment", "shuffle_buffer",
    "pseudo_label_clusters",
]
NON_NEGATIVE_INTS = [
    "pretrain_epochs", "finetune_epochs", "pairs_per_epoch", "finetune_chunks_per_epoch", "num_workers",
    "num_verification_speakers", "valid_per_speaker", "test_per_speaker", "valid_speakers", "cohort_size",
    "num_speakers", "sentences_per_speaker", "pseudo_label_rounds", "pseudo_label_epochs",
]
FOLDERS = ["data_folder", "voxceleb1_folder", "voxceleb2_folder", "train_shards"]


def check_hparams(hparams):
    """Raises ``ValueError`` (or ``FileNotFoundError``) for an invalid setting.

    Example
    -------
    >>> check_hparams({"chunk_size": 3200, "label_fraction": 0.5})
    >>> check_hparams({"label_fraction": 1.5})
    Traceback (most recent call last):
    ...
    ValueError: label_fraction=1.5 is invalid: it must be in (0, 1]
    """
    for key in POSITIVE_INTS:
        value = hparams.get(key)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"{key}={value!r} is invalid: it must be a positive integer")
    for key in NON_NEGATIVE_INTS:
        value = hparams.get(key)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ValueError(f"{key}={value!r} is invalid: it must be an integer >= 0")
    fraction = hparams.get("label_fraction")
    if fraction is not None and not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"label_fraction={fraction!r} is invalid: it must be in (0, 1]")
    choices = {
        "critic": sorted(hparams["critics"]) if isinstance(hparams.get("critics"), dict) else sorted(CRITICS),
        "score_norm": list(SCORE_NORMS),
        "pretrain_data": list(PRETRAIN_DATA),
    }
    if hparams.get("encoder") is not None:
        check_encoder(hparams["encoder"], hparams)
    if hparams.get("encoder") is None or isinstance(hparams["encoder"], SincNetEncoder):  # its own settings
        choices.update({"norm_over": ["time", "channel_time"], "encoder_implementation": list(IMPLEMENTATIONS),
                        "layer_norm": list(LAYER_NORMS), "fc_init": list(FC_INITS)})
    for key, valid in choices.items():
        if key in hparams and hparams[key] not in valid:
            raise ValueError(f"{key}={hparams[key]!r} is invalid: choose one of {valid}")
    backends = hparams.get("verification_backends")
    if backends is not None:
        unknown = [b for b in backends if b not in BACKENDS] if isinstance(backends, (list, tuple)) else [backends]
        if unknown or not backends:
            raise ValueError(f"verification_backends={backends!r} is invalid: a list of back ends from {list(BACKENDS)}")
    exported = hparams.get("export_backend")
    if exported is not None and exported not in BACKENDS:
        raise ValueError(f"export_backend={exported!r} is invalid: choose one of {list(BACKENDS)}")
    saved = hparams.get("save_scores")
    if saved is not None and not (isinstance(saved, (list, tuple)) and all(isinstance(n, str) for n in saved)):
        raise ValueError(f"save_scores={saved!r} is invalid: a list of system names, e.g. [LIM (nce), MFCC statistics]")
    if hparams.get("objective") is not None:
        check_objective(hparams["objective"], hparams.get("objective_name"))
    num_negatives = hparams.get("num_negatives")
    if num_negatives is not None and (not isinstance(num_negatives, int) or num_negatives < 1):
        raise ValueError(f"num_negatives={num_negatives!r} is invalid: an integer >= 1, or null for all")
    for key in FOLDERS:
        folder = hparams.get(key)
        if folder is not None and not os.path.isdir(folder):
            raise FileNotFoundError(f"{key}={folder!r} does not exist (or is not a folder)")
    pool = hparams.get("unlabelled_folder")
    for folder in [pool] if isinstance(pool, str) else (pool or []):
        if not isinstance(folder, str) or not os.path.isdir(folder):
            raise FileNotFoundError(f"unlabelled_folder: {folder!r} does not exist (or is not a folder); "
                                    "give a folder of recordings, or a list of them: --unlabelled_folder=[DIR1,DIR2]")
    if hparams.get("pretrain_data") == "none" and not pool:
        raise ValueError("pretrain_data='none' needs an unlabelled pool: set unlabelled_folder")
    fraction = hparams.get("pretrain_audio_fraction")
    if fraction is not None and not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"pretrain_audio_fraction={fraction!r} is invalid: it must be in (0, 1]")
    segment = hparams.get("unlabelled_segment_seconds")
    if segment is not None and not (isinstance(segment, (int, float)) and segment > 0):
        raise ValueError(f"unlabelled_segment_seconds={segment!r} is invalid: a positive number of seconds")
    pretrained = hparams.get("pretrained_folder")
    lim_folder = layout.experiment_stage_folder(pretrained or "", layout.PRETRAIN)
    if pretrained is not None and not os.path.isdir(lim_folder):
        raise FileNotFoundError(
            f"pretrained_folder={pretrained!r} holds no LIM run (no {lim_folder}): "
            "pass the output_folder of a finished LIM run"
        )


def check_encoder(encoder, hparams=None):
    """The encoder keeps the contract every stage relies on (docs/new_encoder.md), at the yaml's chunk and rate.

    An ``nn.Module`` mapping ``(N, chunk_size)`` chunks to ``(N, embedding_size)``, with integer
    ``chunk_size``, ``sample_rate`` and ``embedding_size`` and a ``config`` dict that rebuilds it.

    Example
    -------
    >>> check_encoder(torch.nn.Linear(4, 2))
    Traceback (most recent call last):
    ...
    ValueError: encoder: a Linear lacks chunk_size, sample_rate, embedding_size, config, the contract of a chunk encoder (docs/new_encoder.md)
    """
    kind = type(encoder).__name__
    missing = [key for key in ("chunk_size", "sample_rate", "embedding_size", "config") if not hasattr(encoder, key)]
    if missing or not isinstance(encoder, torch.nn.Module):
        raise ValueError(f"encoder: a {kind} lacks {', '.join(missing) or 'nn.Module'}, the contract of a chunk "
                         "encoder (docs/new_encoder.md)")
    if not isinstance(encoder.config, dict):
        raise ValueError(f"encoder: the {kind}'s config must be the dict of arguments that rebuild it")
    for key in ("chunk_size", "sample_rate"):
        if hparams is not None and hparams.get(key) is not None and getattr(encoder, key) != hparams[key]:
            raise ValueError(f"encoder: the {kind}'s {key} is {getattr(encoder, key)} but the yaml's {key} is "
                             f"{hparams[key]}: declare it as {key}: !ref <{key}>")


def check_objective(objective, objective_name=None):
    """The yaml's ``objective`` keeps :class:`sincmi.objectives.MIObjective`'s contract and is the one its
    ``objective_name`` names (an override of the name alone would rename the run, not change its objective).

    Example
    -------
    >>> from sincmi.objectives import InfoNCE
    >>> check_objective(InfoNCE(), "nce")
    >>> check_objective(InfoNCE(), "bce")
    Traceback (most recent call last):
    ...
    ValueError: objective_name='bce' names the run, but the yaml's objective is InfoNCE (name 'nce'): declare objective: !new:sincmi.objectives.<Class> for that objective (e.g. use lim_bce.yaml), or set objective_name: nce
    """
    kind = type(objective).__name__
    if not isinstance(objective, torch.nn.Module) or not isinstance(getattr(objective, "name", None), str) \
            or not isinstance(getattr(objective, "rows_without_negatives", None), int):
        raise ValueError(f"objective: a {kind} does not keep the contract of sincmi.objectives.MIObjective "
                         "(an nn.Module with forward(pos, neg, valid), a str name and rows_without_negatives): "
                         "subclass MIObjective (docs/new_objective.md)")
    if objective_name is not None and objective_name != objective.name:
        raise ValueError(f"objective_name={objective_name!r} names the run, but the yaml's objective is {kind} "
                         f"(name {objective.name!r}): declare objective: !new:sincmi.objectives.<Class> for that "
                         f"objective (e.g. use lim_{objective_name}.yaml), or set objective_name: {objective.name}")
