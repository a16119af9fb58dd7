"""The stages every recipe runs: prepare -> pretrain (LIM) -> speaker id -> verification -> report.

Each training stage has its own checkpoint folder, so an interrupted run
resumes where it stopped and a finished stage is not run again. Recipes call
these functions in order from their ``train.py``; every setting comes from
the hparams (the yaml and its command-line overrides).
"""

import inspect
import json
import logging
import os
import random
import shutil
import sys
import time

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.sampler import ReproducibleRandomSampler
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.distributed import if_main_process, run_on_main

from sincmi import data, distributed, layout, progress, shards
from sincmi.prepare import unlabelled
from sincmi.prepare.manifest import OPTS_FILE, trained_stages
from sincmi.brains import DistillationBrain, LIMBrain, SpeakerIdBrain
from sincmi.checkpoints import make_checkpointer
from sincmi.manifest_table import ManifestTable, as_table
from sincmi.command_line import check_device
from sincmi.config import PRETRAIN_DATA, check_hparams
from sincmi.distillation import SelfDistillation
from sincmi.plots import embedding_map, training_curves
from sincmi.reporting import write_results
from sincmi.verification import embed_dataset, result_rows, verify
from sincmi.provenance import record_start, run_provenance
from sincmi.pseudo_labels import cluster_embeddings, purity, relabelled

logger = logging.getLogger(__name__)


def run(main, argv):
    """Runs a recipe's ``main(argv)``: a failure on any process fails the run, under every launcher.

    Recipes end with ``stages.run(main, sys.argv[1:])``; see
    :func:`sincmi.distributed.run_recipe` for what it does under ``torchrun``.
    """
    distributed.run_recipe(main, argv)


def start_experiment(argv):
    """Parses the command line, loads the yaml, creates the output folder.

    Returns ``(hparams, run_opts)``, as every SpeechBrain recipe starts; the
    hparams are checked first (:func:`sincmi.config.check_hparams`). Under
    ``torchrun`` it joins the process group first.
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    check_device(run_opts.get("device") or "cpu")  # --device cuda without a GPU: said now, not mid-run
    # Under torchrun: join the process group (a no-op in a single process).
    sb.utils.distributed.ddp_init_group(run_opts)
    progress.configure(run_opts)
    record_start()
    with open(hparams_file) as f:
        hparams = load_hyperpyyaml(f, overrides)
    check_hparams(hparams)
    refuse_another_runs_folder(hparams)  # before anything is written into the folder
    distributed.seed_this_process(hparams["seed"])
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    quiet_third_party_loggers()
    if if_main_process():
        keep_recipe_script(hparams["output_folder"])
    return hparams, run_opts


def refuse_another_runs_folder(hparams):
    """Refuses an ``output_folder`` whose trained run was prepared from other data, before writing in it.

    The preparers refuse it too (:func:`sincmi.prepare.manifest.already_prepared`),
    but only after the run has started writing its logs there; this check
    compares the settings the folder was prepared with (its data folder, seed,
    split sizes) with the run's, so a refused run leaves the folder as it was.
    The Demo's data folder is its ``synth_folder`` when none is given.
    """
    save_folder = hparams.get("save_folder")
    opts_file = os.path.join(save_folder or "", OPTS_FILE)
    if not save_folder or not os.path.isfile(opts_file):
        return
    with open(opts_file) as f:
        stored = json.load(f)
    given = {**hparams}
    if given.get("data_folder") is None and given.get("synth_folder"):
        given["data_folder"] = given["synth_folder"]
    derived = ("sample_rate", "min_samples", "resample")  # worked out from other settings (preparer_settings)
    changed = [key for key, value in stored.items()
               if key not in derived and given.get(key) is not None and not isinstance(given[key], dict) and given[key] != value]
    trained = trained_stages(save_folder)
    if changed and trained:
        raise ValueError(
            f"{hparams['output_folder']} holds another run, prepared with other settings "
            f"({', '.join(f'{key}: {stored[key]!r} -> {given[key]!r}' for key in changed)}) and trained "
            f"({', '.join(trained)}); nothing was written. Pass another --output_folder, or delete that folder "
            "to start over.")


# Libraries whose DEBUG lines would fill log.txt (matplotlib's font search: half of it).
QUIET_LOGGERS = ("matplotlib", "PIL", "numba", "onnxscript", "onnx_ir", "urllib3", "fsspec", "filelock")


def quiet_third_party_loggers():
    """Third-party libraries log warnings and errors only (SpeechBrain's log file takes DEBUG)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def keep_recipe_script(output_folder):
    """Copies the recipe's ``train.py`` (the ``__main__`` script) into the output folder.

    SpeechBrain copies the file that called ``create_experiment_directory``,
    which is this module; the run's own script is what a reader needs.
    """
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    if script and os.path.isfile(script):
        shutil.copy(script, output_folder)
    copied_stages = os.path.join(output_folder, os.path.basename(__file__))
    if os.path.isfile(copied_stages) and os.path.basename(script or "") != os.path.basename(__file__):
        os.remove(copied_stages)


def preparer_settings(preparer, hparams, given=()):
    """The keyword arguments of ``preparer``, taken from the hparams by name.

    Every parameter of the preparer is looked up in the hparams under its
    own name, except three that every preparer shares and that follow from
    other settings: ``sample_rate`` (the files' rate: ``file_sample_rate``
    when the yaml sets one, else ``sample_rate``), ``min_samples`` (one
    chunk, in file samples) and ``resample`` (``resample_audio``). A
    parameter without a default that the hparams lack is a ``KeyError``
    naming it, unless it is among the ``given`` names (set by the caller).

    Example
    -------
    >>> def prepare_toy(data_folder, save_folder, min_samples, resample, seed=0):
    ...     pass
    >>> preparer_settings(prepare_toy, {"data_folder": "d", "save_folder": "s", "chunk_size": 3200,
    ...                                 "sample_rate": 16000, "resample_audio": False})
    {'data_folder': 'd', 'save_folder': 's', 'min_samples': 3200, 'resample': False}
    """
    rates = data.rate_pair(hparams)
    shared = {
        "sample_rate": rates[0],
        "min_samples": data.file_frames(hparams["chunk_size"], rates),
        "resample": hparams.get("resample_audio", False),
    }
    settings = {}
    for name, parameter in inspect.signature(preparer).parameters.items():
        if name in shared:
            settings[name] = shared[name]
        elif name in hparams:
            settings[name] = hparams[name]
        elif parameter.default is inspect.Parameter.empty and name not in given:
            raise KeyError(f"{preparer.__name__} needs the setting {name!r}: add it to the yaml")
    return settings


def prepare(hparams, preparer, timings=None, **settings):
    """Stage 1: runs ``preparer`` once, on the main process, with its settings from the hparams.

    ``settings`` override or add keyword arguments (see :func:`preparer_settings`);
    the time it took is added to ``timings["prepare"]``.
    """
    start = time.time()
    run_on_main(preparer, kwargs={**preparer_settings(preparer, hparams, settings), **settings})
    if timings is not None:
        timings["prepare"] = timings.get("prepare", 0.0) + time.time() - start


def stop_after_preparation(hparams):
    """Ends the run once the manifests are written when ``prepare_only`` is set (exit status 0).

    Preparation of a large corpus is then its own step, on one process, before
    the ``torchrun`` run (which finds the manifests up to date): no rank waits
    hours at a barrier while the main one reads a million files.
    """
    if hparams.get("prepare_only"):
        logger.info(f"prepare_only: the manifests are in {hparams['save_folder']}; stopping before training")
        distributed.leave_process_group()
        sys.exit(0)


def load_manifests(hparams, data_root, splits=("train", "valid", "test")):
    """``{split: rows}`` of the manifests the preparer wrote in ``save_folder``."""
    return {split: data.load_manifest(os.path.join(hparams["save_folder"], f"{split}.csv"), data_root)
            for split in splits}


def load_speaker_id_data(hparams, data_root):
    """Manifests of ``save_folder`` -> (rows by split, speaker label encoder)."""
    manifests = load_manifests(hparams, data_root)
    labels = data.speaker_label_encoder(
        manifests["train"], os.path.join(hparams["save_folder"], layout.LABEL_ENCODER_FILE)
    )
    return manifests, labels


def training_audio(hparams, rows):
    """The in-memory waveforms of ``rows`` when ``audio_cache`` is set, else None."""
    return data.preload_audio(rows) if hparams.get("audio_cache") else None


def lim_pretraining(hparams, run_opts, manifests, timings, audio=None):
    """Stage 2: LIM pretraining without labels; returns the encoder.

    Pretrains ``hparams["encoder"]`` on :func:`pretraining_rows` (the
    ``pretrain_data`` choice), validating on ``manifests["valid"]``; datasets
    come from :class:`sincmi.data.RecipeDatasets` (chunk size, rates, gain,
    pair distance). ``audio``: the training waveforms when the caller holds
    them (:func:`training_audio`); else they are loaded when ``audio_cache``
    is set. Other settings: see :func:`pretrain`. Adds ``pretrain`` to
    ``timings``.
    """
    start = time.time()
    if audio is None:
        audio = training_audio(hparams, manifests["train"])
    sets = data.RecipeDatasets(hparams, audio)
    rows = pretraining_rows(hparams, manifests)
    pool = manifests.get("unlabelled") or {}
    file_rate = sets.rates[0] if sets.rates else sets.sample_rate
    minutes = as_table(rows).seconds(file_rate) / 60
    logger.info(f"LIM pretrains on {len(rows)} segments, {minutes:.1f} min of audio "
                f"({len(pool)} of the segments from the unlabelled pool)")
    if if_main_process():  # what LIM learned from, for results.json (report)
        with open(os.path.join(hparams["save_folder"], layout.PRETRAINING_DATA_FILE), "w") as f:
            json.dump({"segments": len(rows), "minutes": round(minutes, 3), "pool_segments": len(pool)}, f)
    train_set = shard_pairs(hparams, pool) if hparams.get("train_shards") else sets.pairs(rows)
    encoder = pretrain(hparams, run_opts, train_set, sets.pairs(manifests["valid"], train=False))
    timings[layout.PRETRAIN] = time.time() - start
    return encoder


def pseudo_label_training(hparams, run_opts, encoder, manifests, timings, audio=None):
    """Stage 2b (``pseudo_label_rounds`` > 0): the LIM encoder fine-tuned on clusters of its own embeddings.

    Each round embeds the training speakers' audio that LIM learned from
    (:func:`labelled_pretraining_parts`; their labels unused), clusters it into
    ``pseudo_label_clusters`` (:mod:`sincmi.pseudo_labels`), and fine-tunes the
    encoder with ``pseudo_label_classifier`` (AAM-softmax) and
    ``pseudo_label_optimizer`` on the clusters for ``pseudo_label_epochs``, the
    checkpoint chosen on the clusters of the validation files. Returns each
    round's cluster purity against the true speakers (a diagnostic only).
    """
    from speechbrain.dataio.encoder import CategoricalEncoder
    from speechbrain.utils.epoch_loop import EpochCounter

    rounds = hparams.get("pseudo_label_rounds") or 0
    start, purities = time.time(), []
    sets = data.RecipeDatasets(hparams, audio)
    rows = {key: row for part in labelled_pretraining_parts(hparams, manifests) for key, row in part.items()}
    for number in range(1, rounds + 1):
        embeddings = embed_dataset(encoder, sets.sentences(rows), device_of(run_opts), hparams["eval_batch_size"],
                                   hparams.get("verification_shift"), progress=if_main_process())
        clusters = cluster_embeddings(embeddings, hparams["pseudo_label_clusters"])
        purities.append(purity(clusters, {key: row["spk_id"] for key, row in rows.items()}))
        named = relabelled(rows, clusters)
        names = CategoricalEncoder()
        names.update_from_iterable(sorted({row["spk_id"] for row in named.values()}))
        logger.info(f"Pseudo-labels, round {number}: {len(names)} clusters of {len(named)} utterances "
                    f"(purity against the true speakers {purities[-1]:.3f}, a diagnostic)")
        valid = {key: named[key] for key in manifests["valid"] if key in named}
        train_speaker_id(hparams, run_opts, f"{layout.PSEUDO_LABELS}_{number}", encoder, len(names),
                         sets.chunks(named, names), sets.sentences(valid, names), None, freeze_encoder=False,
                         counter=EpochCounter(hparams["pseudo_label_epochs"]),
                         classifier=hparams["pseudo_label_classifier"], optimizer=hparams["pseudo_label_optimizer"])
    if rounds:
        timings[layout.PSEUDO_LABELS] = time.time() - start
    return purities


def identify(hparams, run_opts, stage, encoder, manifests, labels, timings, freeze_encoder=None, audio=None,
             epoch_counter="finetune_epoch_counter"):
    """Stage 3: speaker identification of the training speakers; returns the test statistics.

    Trains a classifier on ``encoder`` (frozen: a probe; else fine-tuned with
    it) on the ``label_fraction`` share of each training speaker's audio,
    keeps the best validation checkpoint, and tests on ``manifests["test"]``
    when there is one (empty statistics otherwise). ``stage`` names its
    checkpoint folder (:mod:`sincmi.layout`); ``freeze_encoder`` defaults to
    the hparams'; ``epoch_counter`` names the yaml's epoch counter for this
    stage (each training stage needs its own). Adds ``stage`` to ``timings``.
    """
    start = time.time()
    sets = data.RecipeDatasets(hparams, audio)
    labelled = data.label_subset(manifests["train"], hparams["label_fraction"], hparams["seed"], hparams["chunk_size"])
    test = manifests.get("test")
    stats = train_speaker_id(
        hparams,
        run_opts,
        stage,
        encoder,
        len(labels),
        sets.chunks(labelled, labels),
        sets.sentences(manifests["valid"], labels),
        sets.sentences(test, labels) if test else None,
        freeze_encoder=hparams["freeze_encoder"] if freeze_encoder is None else freeze_encoder,
        counter=declared(hparams, epoch_counter),
    )
    timings[stage] = time.time() - start
    return stats


def shard_pairs(hparams, pool):
    """LIM's training pairs read from ``train_shards`` (:class:`sincmi.shards.ShardPairs`).

    The shards must have been packed from the manifests of ``save_folder``
    that ``pretrain_data`` names (``train``: ``train.csv``; ``all``: with
    ``valid.csv`` and ``test.csv``), and ``unlabelled.csv`` with a pool;
    ``pretrain_audio_fraction`` must be 1 (the shards hold what was packed).
    """
    if (hparams.get("pretrain_audio_fraction") or 1.0) < 1.0:
        raise ValueError("train_shards holds whole manifests: pretrain_audio_fraction must be 1 "
                         "(or leave train_shards null to read the files)")
    splits = {"train": ["train"], "all": ["train", "valid", "test"], "none": []}[hparams.get("pretrain_data", "train")]
    manifests = [path for path in (os.path.join(hparams["save_folder"], f"{split}.csv") for split in splits)
                 if os.path.isfile(path)]
    if pool:
        manifests.append(os.path.join(hparams["save_folder"], unlabelled.MANIFEST))
    rates = data.rate_pair(hparams)
    if rates[0] != rates[1]:
        raise ValueError("train_shards: the files must be at sample_rate (file_sample_rate differs)")
    return shards.ShardPairs(
        hparams["train_shards"], hparams["chunk_size"], seed=hparams["seed"],
        pairs_per_segment=hparams.get("pairs_per_segment") or 1,
        shuffle_buffer=hparams.get("shuffle_buffer") or 4096, gain_range=hparams.get("random_gain"),
        min_pair_distance=hparams.get("min_pair_distance") or 0, sample_rate=hparams["sample_rate"],
        manifests=manifests, epoch_counter=declared(hparams, "pretrain_epoch_counter"),
    )


def calibration_speaker_set(hparams, rows):
    """The training speakers kept out of LIM and the back ends to fit the calibration on (``calibration_speakers``).

    ``calibration_speakers: 0`` (default): none; the calibration is fitted on
    every training speaker (:func:`sincmi.calibration.fit_on_training_speakers`).
    Otherwise that many speakers of ``rows``, drawn from the seed.

    >>> sorted(calibration_speaker_set({"calibration_speakers": 1, "seed": 0}, {"a": {"spk_id": "x"},
    ...                                "b": {"spk_id": "y"}, "c": {"spk_id": "z"}}))
    ['y']
    """
    count = hparams.get("calibration_speakers") or 0
    if not count:
        return set()
    names = sorted({row["spk_id"] for row in rows.values()})
    if count > len(names) - 2:
        raise ValueError(f"calibration_speakers={count} leaves fewer than 2 of the {len(names)} training speakers "
                         "for LIM and the back ends: choose fewer")
    return set(random.Random(hparams["seed"]).sample(names, count))


def pretraining_rows(hparams, manifests):
    """The sentences LIM pretrains on, without their labels (:func:`labelled_pretraining_parts`), and the
    unlabelled pool (:func:`prepare_unlabelled_pool`, with ``unlabelled_folder``)."""
    pool = manifests.get("unlabelled") or {}
    parts = [part for part in labelled_pretraining_parts(hparams, manifests) + [pool] if len(part)]
    if not parts:
        raise ValueError("pretrain_data: none needs an unlabelled pool (unlabelled_folder)")
    # One table, never a dict per row: at VoxCeleb2 size the training manifest has millions of rows.
    return parts[0] if len(parts) == 1 else ManifestTable.concat(parts)


def labelled_pretraining_parts(hparams, manifests):
    """The training speakers' manifests LIM learns from, without their labels (``pretrain_data``).

    ``pretrain_data``: ``train`` (default): the training split. ``all``:
    every file of the training speakers, their validation and test files too
    (unlabelled, so the speaker-id test then scores sentences the encoder has
    heard, never their labels). ``none``: none of them (the pool alone).
    ``pretrain_audio_fraction`` (default 1) keeps that share of each training
    speaker's audio (:func:`sincmi.data.label_subset`, drawn from the seed).
    Verification speakers are never used, nor the ``calibration_speakers``
    (:func:`calibration_speaker_set`).
    """
    choice = hparams.get("pretrain_data", "train")
    if choice not in PRETRAIN_DATA:
        raise ValueError(f"pretrain_data={choice!r} is invalid: choose one of {list(PRETRAIN_DATA)}")
    parts = {"train": [manifests["train"]], "none": [],
             "all": [manifests["train"], manifests["valid"], manifests.get("test", {})]}[choice]
    held = calibration_speaker_set(hparams, manifests["train"])
    if held:  # the calibration's speakers stay unheard
        parts = [{key: row for key, row in part.items() if row["spk_id"] not in held} for part in parts]
    fraction = hparams.get("pretrain_audio_fraction") or 1.0
    if fraction < 1.0:
        parts = [data.label_subset(dict(part), fraction, hparams["seed"], hparams["chunk_size"]) for part in parts]
    return [part for part in parts if len(part)]


def prepare_unlabelled_pool(hparams, timings, labelled_folders):
    """Stage 1b: the ``unlabelled_folder`` pool's manifest, without the audio of ``labelled_folders``.

    A no-op without ``unlabelled_folder``. Files of the labelled corpus (every
    speaker's, verification speakers' included) are left out of the pool
    (:func:`sincmi.prepare.unlabelled.prepare_unlabelled`). Returns the
    pool's rows (``{}`` without a pool), for ``manifests["unlabelled"]``.
    """
    if not hparams.get("unlabelled_folder"):
        return {}
    prepare(hparams, unlabelled.prepare_unlabelled, timings, labelled_folders=list(labelled_folders))
    return data.load_manifest(os.path.join(hparams["save_folder"], unlabelled.MANIFEST), "")


def report(hparams, systems, timings, run_opts=None):
    """Writes ``results.json`` in the output folder and prints the table.

    ``systems`` maps a system name to its metrics (fractions). ``results.json``
    also holds the stages' times and the run's provenance
    (:func:`sincmi.provenance.run_provenance`: commit, packages, device,
    threads, seed, command). Also plots the train log (``training_curves.png``).
    """
    timings = {**timings, "total": sum(v for k, v in timings.items() if k != "total")}  # the stages' sum
    results = {"systems": systems, "timings_s": timings, "provenance": run_provenance(hparams, run_opts)}
    pretraining_data = os.path.join(hparams["save_folder"], layout.PRETRAINING_DATA_FILE)
    if os.path.isfile(pretraining_data):  # the audio LIM pretrained on (segments, minutes, pool's share)
        with open(pretraining_data) as f:
            results["pretraining_data"] = json.load(f)
    if not if_main_process():  # under DDP every process has the same figures; one writes them
        return results
    table = write_results(os.path.join(hparams["output_folder"], layout.RESULTS_FILE), results)
    logger.info("Results\n" + table)
    train_log = hparams.get("train_log")
    if train_log and os.path.isfile(train_log):
        try:
            path = training_curves(train_log, os.path.join(hparams["output_folder"], "training_curves.png"))
            logger.info(f"Training curves: {path}")
        except ValueError as error:  # e.g. a run with no completed epoch
            logger.warning(f"no training curves: {error}")
    return results


def plot_embeddings(hparams, encoder, rows, device, max_speakers=20, name="test"):
    """Draws ``embeddings_<name>.png``: a 2-D map of the utterances of ``max_speakers`` speakers."""
    if not if_main_process():
        return None
    speakers = set(sorted({row["spk_id"] for row in rows.values()})[:max_speakers])
    subset = {key: row for key, row in rows.items() if row["spk_id"] in speakers}
    dataset = data.RecipeDatasets(hparams).sentences(subset)
    embeddings = embed_dataset(encoder, dataset, device, hparams["eval_batch_size"])
    path = os.path.join(hparams["output_folder"], f"embeddings_{name}.png")
    embedding_map(torch.stack(list(embeddings.values())).numpy(), [subset[k]["spk_id"] for k in embeddings], path,
                  max_speakers, title=f"{hparams.get('system_name', 'encoder')}: {name} utterances (PCA)")
    logger.info(f"Embedding map: {path}")
    return path


def pretrain(hparams, run_opts, train_set, valid_set):
    """Unsupervised LIM pretraining of ``hparams['encoder']``.

    Uses ``pretrain_epochs`` (0 skips the stage: the supervised baseline),
    ``pretrain_epoch_counter``, ``pretrain_modules`` (encoder, discriminator,
    objective), ``pairs_per_epoch`` (sentences drawn per epoch, with
    repetition across passes; default one pass), ``pretrain_batch_size``,
    ``pretrain_optimizer``, ``num_workers``. An objective that is a
    :class:`sincmi.distillation.SelfDistillation` makes it self-distillation
    (DINO) on the same pairs, its head in the discriminator's place.

    Returns the encoder with the weights of the checkpoint kept (LIM: the best
    validation loss; self-distillation: the last epoch).
    """
    encoder = hparams["encoder"]
    if hparams["pretrain_epochs"] <= 0:
        logger.info("pretrain_epochs is 0: no LIM pretraining (supervised baseline)")
        return encoder
    counter = declared(hparams, "pretrain_epoch_counter")
    modules = declared(hparams, "pretrain_modules")
    missing = {"encoder", "discriminator", "objective"} - set(modules)
    if missing or modules["encoder"] is not encoder:
        raise ValueError(
            f"pretrain_modules must hold the encoder (!ref <encoder>), the discriminator and the objective; "
            f"{'it lacks ' + str(sorted(missing)) if missing else 'its encoder is not <encoder>'}"
        )
    distill = isinstance(modules["objective"], SelfDistillation)
    if distill:  # the teacher starts as the student, before a checkpoint may resume it
        modules["objective"].init_teacher(encoder, modules["discriminator"])
    checkpointer = make_checkpointer(
        layout.stage_folder(hparams["save_folder"], layout.PRETRAIN), {**modules, "counter": counter}
    )
    brain = (DistillationBrain if distill else LIMBrain)(
        modules=modules,
        opt_class=hparams["pretrain_optimizer"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=checkpointer,
    )
    # Every batch needs >= 2 sentences (a negative comes from another sentence):
    # full training batches only, and no 1-sentence remainder in validation.
    pairs = len(train_set) if isinstance(train_set, shards.ShardPairs) else hparams.get("pairs_per_epoch") or len(train_set)
    batch_size = min(hparams["pretrain_batch_size"], pairs)
    if batch_size < 2:
        raise ValueError(
            f"LIM needs at least 2 training sentences per batch; pretrain_batch_size="
            f"{hparams['pretrain_batch_size']}, pairs_per_epoch={pairs}"
        )
    loader_kwargs = {"batch_size": batch_size, "num_workers": hparams["num_workers"],
                     "generator": loader_generator(hparams["seed"]), "collate_fn": PaddedBatch}
    if isinstance(train_set, shards.ShardPairs):
        # One endless stream over the epochs (SpeechBrain's LoopedLoader): its workers persist.
        steps = shards.steps_per_epoch(hparams.get("pairs_per_epoch"), batch_size, len(train_set))
        train_kwargs = {**loader_kwargs, "looped_nominal_epoch": steps}
        logger.info(f"LIM reads {len(train_set.shards)} shards of {hparams['train_shards']}: {steps} steps "
                    f"per epoch, {train_set.pairs_per_segment} pair(s) per segment read")
    else:
        sampler = epoch_sampler(train_set, hparams.get("pairs_per_epoch"), hparams["seed"])
        brain.train_sampler = sampler
        # Workers that persist across epochs (not forked again each epoch)
        train_kwargs = {**loader_kwargs, "sampler": sampler, "drop_last": True,
                        "persistent_workers": hparams["num_workers"] > 0}
    method = "self-distillation" if distill else "LIM"
    logger.info(f"Stage pretrain: {method} ({modules['objective'].name}) for {counter.limit} epoch(s)")
    brain.fit(
        counter,
        train_set,
        valid_set,
        train_loader_kwargs=train_kwargs,
        valid_loader_kwargs={**loader_kwargs, "drop_last": len(valid_set) % batch_size == 1},
    )
    checkpointer.recover_if_possible(min_key=layout.best_checkpoint_key(layout.PRETRAIN))
    return encoder  # not brain.modules.encoder, which DDP may have wrapped


def loader_generator(seed):
    """The DataLoader's own generator (for its workers' seeds), different on every rank.

    Without it, creating a loader iterator draws from the global generator,
    which a run resumed in the middle of an epoch would draw at another point
    than the uninterrupted run, changing every later random chunk. Each rank
    gets its own (:func:`sincmi.distributed.process_seed`), so that no two
    ranks' workers draw the same offsets and gains.
    """
    return torch.Generator().manual_seed(distributed.process_seed(seed))


def epoch_sampler(dataset, items_per_epoch, seed):
    """Random order over ``dataset`` with ``items_per_epoch`` draws per epoch.

    More draws than items makes several passes in one epoch (every item once
    per pass); None means one pass. It is stored as the Brain's
    ``train_sampler`` so that ``fit()`` reshuffles it every epoch.
    """
    return ReproducibleRandomSampler(dataset, seed=seed, num_samples=items_per_epoch or len(dataset))


def declared(hparams, key):
    """``hparams[key]``, or a KeyError that says how the recipes' yamls declare it.

    Epoch counters and the LIM modules are declared in the yaml, as in
    SpeechBrain recipes; a yaml copied from an older version may lack them.
    """
    if key in hparams:
        return hparams[key]
    example = {
        "pretrain_modules": "pretrain_modules:\n    encoder: !ref <encoder>\n"
                            "    discriminator: !ref <discriminator>\n    objective: !ref <objective>",
    }.get(key, f"{key}: !new:speechbrain.utils.epoch_loop.EpochCounter\n    limit: !ref <"
               f"{'pretrain' if key.startswith('pretrain') else 'finetune'}_epochs>")
    raise MissingSetting(f"the yaml has no {key!r}; add it as the recipes' yamls declare it:\n{example}")


class MissingSetting(KeyError):
    """A KeyError whose message prints as written (a yaml snippet over several lines)."""

    def __str__(self):
        return str(self.args[0])


def train_speaker_id(hparams, run_opts, name, encoder, num_speakers, train_set, valid_set, test_set, freeze_encoder,
                     counter, classifier=None, optimizer=None):
    """Trains and tests a speaker classifier on ``encoder``'s chunk embeddings.

    Uses ``classifier`` (a partial taking ``input_size`` and
    ``num_speakers``: the number of speakers comes from the data, so the
    classifier is made here), ``finetune_optimizer``,
    ``finetune_chunks_per_epoch`` (default: one chunk per sentence),
    ``finetune_batch_size``, ``eval_batch_size``, ``num_workers``.

    Arguments
    ---------
    name : str
        Stage name: its checkpoint folder and its rows in the train log.
    counter : speechbrain.utils.epoch_loop.EpochCounter
        The stage's epoch loop (the yaml's ``finetune_epoch_counter``).
    classifier, optimizer : callable, optional
        In place of the yaml's ``classifier`` and ``finetune_optimizer``.
    freeze_encoder : bool
        True: probe a fixed encoder; False: fine-tune it with the classifier.
    test_set : dataset or None
        None: no test; the best validation checkpoint is loaded.

    Returns
    -------
    dict
        Test statistics (``sentence_error``, ``chunk_error``, counts); empty
        without a test set.
    """
    classifier = (classifier or hparams["classifier"])(input_size=encoder.embedding_size, num_speakers=num_speakers)
    modules = {"encoder": encoder, "classifier": classifier}
    checkpointer = make_checkpointer(os.path.join(hparams["save_folder"], name), {**modules, "counter": counter})
    brain = SpeakerIdBrain(
        modules=modules,
        opt_class=optimizer or hparams["finetune_optimizer"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=checkpointer,
        freeze_encoder=freeze_encoder,
        stage_name=name,
    )
    sampler = epoch_sampler(train_set, hparams.get("finetune_chunks_per_epoch"), hparams["seed"])
    brain.train_sampler = sampler
    train_kwargs = {
        "batch_size": hparams["finetune_batch_size"],
        "num_workers": hparams["num_workers"],
        "generator": loader_generator(hparams["seed"]),
        "sampler": sampler,
        "drop_last": len(sampler) > hparams["finetune_batch_size"],
        "collate_fn": PaddedBatch,
        "persistent_workers": hparams["num_workers"] > 0,
    }
    eval_kwargs = {"batch_size": hparams["eval_batch_size"], "num_workers": hparams["num_workers"]}
    mode = "frozen encoder" if freeze_encoder else "fine-tuned encoder"
    logger.info(f"Stage {name}: speaker id, {mode}, {counter.limit} epoch(s)")
    brain.fit(counter, train_set, valid_set, train_loader_kwargs=train_kwargs, valid_loader_kwargs=eval_kwargs)
    if test_set is None:  # keep the best validation checkpoint's weights
        checkpointer.recover_if_possible(min_key=layout.best_checkpoint_key(name))
        return {}
    brain.evaluate(test_set, min_key=layout.best_checkpoint_key(name), test_loader_kwargs=eval_kwargs)
    return brain.test_stats


def verification(hparams, run_opts, systems, rows, backend_rows, timings, stats=None, cohort_rows=None,
                 audio=None):
    """Stage 4: the trials of ``save_folder/trials.txt`` for each system and back end.

    Arguments
    ---------
    systems : dict
        ``{system name: encoder}`` (any module that embeds chunks).
    rows : dict
        The verification utterances (manifest rows).
    backend_rows : dict
        Utterances of the training speakers the back ends in
        ``verification_backends`` are fitted on, without their labels.
    timings : dict
        Gets ``verification`` (the first system) or ``verification (<name>)``.
    stats : dict, optional
        ``{system name: speaker-id test statistics}`` added to its rows.
    cohort_rows : dict, optional
        Cohort utterances for the hparams' ``score_norm``.

    Score files are written for the systems named in ``save_scores`` (default:
    the first, the run's own system).

    Returns
    -------
    dict
        ``{row name: metrics}`` for :func:`report`, one row per system and back end.
    """
    sets = data.RecipeDatasets(hparams, audio)
    verification_set = sets.sentences(rows)
    same_cohort = cohort_rows is backend_rows
    held = calibration_speaker_set(hparams, backend_rows)
    calibration_rows = {key: row for key, row in backend_rows.items() if row["spk_id"] in held}
    if held:  # their trials fit the calibration; the back ends never see them, as LIM did not
        backend_rows = {key: row for key, row in backend_rows.items() if row["spk_id"] not in held}
    backend_set = sets.sentences(backend_rows)
    calibration_set = sets.sentences(calibration_rows) if held else None
    # One dataset when the cohort is the back ends' set (VoxCeleb): verify() then embeds it once.
    cohort_set = backend_set if same_cohort else sets.sentences(cohort_rows) if cohort_rows else None
    speakers = {key: row["spk_id"] for key, row in rows.items()}
    backend_speakers = {key: row["spk_id"] for key, row in backend_rows.items()}  # the lda back end's labels
    training_speakers = {key: row["spk_id"] for key, row in (calibration_rows if held else backend_rows).items()}
    saved = hparams.get("save_scores") or list(systems)[:1]  # default: the run's own system
    top_k = hparams.get("cohort_top_k")
    cohort_size = len(backend_rows if same_cohort else cohort_rows or {})
    if hparams.get("score_norm") == "as-norm" and top_k and top_k > cohort_size:
        logger.warning(f"cohort_top_k={top_k} is more than the {cohort_size} cohort utterances: AS-norm uses "
                       "them all (as s-norm)")
        top_k = cohort_size
    results = {}
    for i, (name, encoder) in enumerate(systems.items()):
        start = time.time()
        by_backend = verify(
            encoder, verification_set, os.path.join(hparams["save_folder"], layout.TRIALS_FILE),
            device_of(run_opts), hparams["eval_batch_size"], hparams["verification_shift"],
            cohort_set=cohort_set, score_norm=hparams.get("score_norm"), top_k=top_k,
            out_folder=hparams["output_folder"], name=name, speakers=speakers,
            backends=hparams.get("verification_backends", ["none"]), backend_set=backend_set,
            save_scores=name in saved, num_workers=hparams.get("num_workers") or 0,
            max_chunks=hparams.get("eval_chunks_per_batch") or 64, training_speakers=training_speakers,
            calibration_set=calibration_set, backend_speakers=backend_speakers,
            calibration_prior=hparams.get("calibration_prior"), p_target=hparams.get("p_target", 0.01),
        )
        timings["verification" if i == 0 else f"verification ({name})"] = time.time() - start
        results.update(result_rows(name, by_backend, (stats or {}).get(name)))
    return results


def load_pretrained_encoder(encoder, experiment_folder):
    """Loads the LIM encoder of an experiment folder (its best validation checkpoint).

    Raises a clear error when the folder holds no LIM checkpoint.
    """
    folder = layout.experiment_stage_folder(experiment_folder or "", layout.PRETRAIN)
    checkpointer = Checkpointer(folder, recoverables={"encoder": encoder})
    if not os.path.isdir(folder) or checkpointer.find_checkpoint(min_key=layout.best_checkpoint_key(layout.PRETRAIN)) is None:
        raise FileNotFoundError(
            f"pretrained_folder {experiment_folder!r} holds no LIM checkpoint (expected "
            f"{folder}/CKPT+...): pass the output_folder of a finished LIM run"
        )
    checkpointer.recover_if_possible(min_key=layout.best_checkpoint_key(layout.PRETRAIN))
    logger.info(f"Loaded the LIM encoder of {experiment_folder}")
    return encoder


def device_of(run_opts):
    """The torch device a run uses (``--device``, default cpu)."""
    return torch.device((run_opts or {}).get("device") or "cpu")

