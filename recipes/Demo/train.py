#!/usr/bin/env python3
"""Demo recipe: LIM on a synthetic (or your own) multi-speaker corpus.

prepare -> LIM pretraining (no labels) -> speaker-id probe (CER) ->
verification on unseen speakers (EER, minDCF), with the random-weights
encoder and mean MFCCs scored on the same data.

Usage:
    python recipes/Demo/train.py recipes/Demo/hparams/lim_nce.yaml
    python recipes/Demo/train.py recipes/Demo/hparams/lim_nce.yaml --data_folder=DIR
"""

import logging
import os
import sys
import time

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_on_main

from sincmi import data, stages
from sincmi.prepare.folder import prepare_folder
from sincmi.prepare.synth import synthesize_corpus

logger = logging.getLogger(__name__)


def prepare(hparams):
    """Synthesises the corpus if needed and writes the manifests."""
    data_folder = hparams["data_folder"]
    if data_folder is None:
        data_folder = hparams["synth_folder"]
        run_on_main(
            synthesize_corpus,
            kwargs={
                "folder": data_folder,
                "num_speakers": hparams["num_speakers"],
                "sentences_per_speaker": hparams["sentences_per_speaker"],
                "sample_rate": hparams["sample_rate"],
                "seed": hparams["seed"],
            },
        )
    run_on_main(
        prepare_folder,
        kwargs={
            "data_folder": data_folder,
            "save_folder": hparams["save_folder"],
            "sample_rate": hparams["sample_rate"],
            "min_samples": hparams["chunk_size"],
            "num_verification_speakers": hparams["num_verification_speakers"],
            "valid_per_speaker": hparams["valid_per_speaker"],
            "test_per_speaker": hparams["test_per_speaker"],
            "max_trials": hparams["max_trials"],
            "seed": hparams["seed"],
        },
    )
    return data_folder


def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file) as f:
        hparams = load_hyperpyyaml(f, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    timings, start = {}, time.time()

    # 1. Prepare
    data_folder = prepare(hparams)
    manifests = {
        split: data.load_manifest(os.path.join(hparams["save_folder"], f"{split}.csv"), data_folder)
        for split in ("train", "valid", "test", "verification")
    }
    labels = data.speaker_label_encoder(
        manifests["train"], os.path.join(hparams["save_folder"], "label_encoder.txt")
    )
    timings["prepare"] = time.time() - start

    # 2. Pretrain without labels
    t = time.time()
    encoder = stages.pretrain(
        hparams,
        run_opts,
        data.pair_dataset(manifests["train"], hparams["chunk_size"]),
        data.pair_dataset(manifests["valid"], hparams["chunk_size"]),
    )
    timings["pretrain"] = time.time() - t

    # 3. Speaker id (probe or fine-tuning), 4. verification: LIM, then the baselines.
    systems = [(hparams["system_name"], "speaker_id", encoder)]
    if hparams["score_baselines"]:
        systems.append(("random weights", "speaker_id_random", hparams["random_encoder"]))
        systems.append(("mean MFCC", "speaker_id_mfcc", hparams["mfcc_baseline"]))
    labelled = data.label_subset(manifests["train"], hparams["label_fraction"], hparams["seed"])
    device = stages.device_of(run_opts)
    results = {"systems": {}, "timings_s": timings}
    for system, stage_name, model in systems:
        t = time.time()
        id_stats = stages.train_speaker_id(
            hparams,
            run_opts,
            stage_name,
            model,
            len(labels),
            data.chunk_dataset(labelled, hparams["chunk_size"], labels),
            data.sentence_dataset(manifests["valid"], labels),
            data.sentence_dataset(manifests["test"], labels),
            freeze_encoder=hparams["freeze_encoder"],
        )
        timings[stage_name] = time.time() - t
        t = time.time()
        verification = stages.verify(
            model,
            data.sentence_dataset(manifests["verification"]),
            os.path.join(hparams["save_folder"], "trials.txt"),
            device,
            hparams["eval_batch_size"],
            hparams["verification_shift"],
        )
        timings[stage_name.replace("speaker_id", "verification")] = time.time() - t
        results["systems"][system] = {**verification, **id_stats}
    timings["total"] = time.time() - start

    # 5. Report
    table = stages.write_results(os.path.join(hparams["output_folder"], "results.json"), results)
    logger.info("Results\n" + table)
    print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
