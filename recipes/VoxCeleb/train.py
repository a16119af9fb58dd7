#!/usr/bin/env python3
"""VoxCeleb speaker verification with LIM (Ravanelli & Bengio, 2018).

prepare (training segments without the trial speakers, official trial list)
-> LIM pretraining without labels (lim_*.yaml) or loading a LIM encoder
(finetune.yaml) -> optional supervised fine-tuning with speaker labels ->
cosine scoring of the trials, optional score normalisation -> EER, minDCF,
score file and DET curve in the output folder.

Usage:
    python recipes/VoxCeleb/train.py recipes/VoxCeleb/hparams/lim_bce.yaml --voxceleb1_folder=/path/to/VoxCeleb1
    python recipes/VoxCeleb/train.py recipes/VoxCeleb/hparams/finetune.yaml --voxceleb1_folder=/path/to/VoxCeleb1 \\
        --pretrained_folder=results/VoxCeleb/lim_bce/1234
"""

import os
import random
import sys
import time

from speechbrain.utils.distributed import run_on_main

from sincmi import data, layout, stages
from sincmi.prepare.voxceleb import prepare_voxceleb


def prepare(hparams):
    """Writes the VoxCeleb manifests and trial list (once, on the main process)."""
    run_on_main(
        prepare_voxceleb,
        kwargs={
            "voxceleb1_folder": hparams["voxceleb1_folder"],
            "save_folder": hparams["save_folder"],
            "trial_list": hparams["trial_list"],
            "voxceleb2_folder": hparams["voxceleb2_folder"],
            "train_sets": hparams["train_sets"],
            "segment_seconds": hparams["segment_seconds"],
            "valid_speakers": hparams["valid_speakers"],
            "sample_rate": hparams["sample_rate"],
            "min_samples": hparams["chunk_size"],
            "resample": hparams["resample_audio"],
            "seed": hparams["seed"],
        },
    )
    roots = {"voxceleb1": hparams["voxceleb1_folder"], "voxceleb2": hparams["voxceleb2_folder"] or ""}
    return {
        split: data.load_manifest(os.path.join(hparams["save_folder"], f"{split}.csv"), roots)
        for split in ("train", "valid", "verification")
    }


def main(argv):
    hparams, run_opts = stages.start_experiment(argv)
    timings = {}

    # 1. Prepare
    rows = prepare(hparams)

    # 2. Encoder: LIM pretraining, or the encoder of a finished LIM run
    encoder = hparams["encoder"]
    if hparams.get("pretrained_folder"):
        stages.load_pretrained_encoder(encoder, hparams["pretrained_folder"])
    start = time.time()
    sets = data.RecipeDatasets(hparams, stages.training_audio(hparams, rows["train"]))
    encoder = stages.pretrain(hparams, run_opts, sets.pairs(rows["train"]), sets.pairs(rows["valid"], train=False))
    timings["pretrain"] = time.time() - start

    # 3. Optional supervised fine-tuning with speaker labels
    if hparams["finetune_epochs"] > 0:
        start = time.time()
        labels = data.speaker_label_encoder(rows["train"], os.path.join(hparams["save_folder"], layout.LABEL_ENCODER_FILE))
        labelled = data.label_subset(rows["train"], hparams["label_fraction"], hparams["seed"], hparams["chunk_size"])
        stages.train_speaker_id(
            hparams, run_opts, layout.FINETUNE, encoder, len(labels),
            sets.chunks(labelled, labels),
            sets.sentences(rows["valid"], labels),
            None,
            freeze_encoder=False,
        )
        timings[layout.FINETUNE] = time.time() - start

    # 4. Verification; the cohort is a fixed random set of training segments
    start = time.time()
    ids = random.Random(hparams["seed"]).sample(sorted(rows["train"]), min(hparams["cohort_size"], len(rows["train"])))
    cohort_set = sets.sentences({i: rows["train"][i] for i in ids})
    by_backend = stages.verify(
        encoder,
        sets.sentences(rows["verification"]),
        os.path.join(hparams["save_folder"], layout.TRIALS_FILE),
        stages.device_of(run_opts),
        hparams["eval_batch_size"],
        hparams["verification_shift"],
        cohort_set=cohort_set,
        score_norm=hparams["score_norm"],
        top_k=hparams["cohort_top_k"],
        out_folder=hparams["output_folder"],
        name=hparams["system_name"],
        speakers={key: row["spk_id"] for key, row in rows["verification"].items()},
        backends=hparams.get("verification_backends", ["none"]),
        backend_set=cohort_set,
    )
    timings["verification"] = time.time() - start
    stages.report(hparams, stages.result_rows(hparams["system_name"], by_backend), timings)


if __name__ == "__main__":
    main(sys.argv[1:])
