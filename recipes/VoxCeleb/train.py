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

from sincmi import data, layout, stages
from sincmi.prepare.voxceleb import prepare_voxceleb


def main(argv):
    hparams, run_opts = stages.start_experiment(argv)
    timings = {}

    # 1. Prepare: training segments without the trial speakers, the official trial list
    stages.prepare(hparams, prepare_voxceleb, timings)
    roots = {"voxceleb1": hparams["voxceleb1_folder"], "voxceleb2": hparams["voxceleb2_folder"] or ""}
    rows = stages.load_manifests(hparams, roots, ["train", "valid", "verification"])
    rows["unlabelled"] = stages.prepare_unlabelled_pool(hparams, timings, list(roots.values()))  # optional
    stages.stop_after_preparation(hparams)  # --prepare_only=True: manifests only

    # 2. Encoder: LIM pretraining, continuing from a finished LIM run's encoder if given
    if hparams.get("pretrained_folder"):
        stages.load_pretrained_encoder(hparams["encoder"], hparams["pretrained_folder"])
    audio = stages.training_audio(hparams, rows["train"])
    encoder = stages.lim_pretraining(hparams, run_opts, rows, timings, audio)

    # 3. Optional supervised fine-tuning with speaker labels (no test split: verification tests)
    if hparams["finetune_epochs"] > 0:
        labels = data.speaker_label_encoder(rows["train"], os.path.join(hparams["save_folder"], layout.LABEL_ENCODER_FILE))
        stages.identify(hparams, run_opts, layout.FINETUNE, encoder, rows, labels, timings, freeze_encoder=False,
                        audio=audio)

    # 4. Verification; the cohort (score normalisation and back ends) is a fixed random set of training segments
    ids = random.Random(hparams["seed"]).sample(sorted(rows["train"]), min(hparams["cohort_size"], len(rows["train"])))
    cohort = {i: rows["train"][i] for i in ids}
    results = stages.verification(hparams, run_opts, {hparams["system_name"]: encoder}, rows["verification"],
                                  cohort, timings, cohort_rows=cohort, audio=audio)

    # 5. Report: results.json, score file, DET curve
    stages.report(hparams, results, timings, run_opts)


if __name__ == "__main__":
    stages.run(main, sys.argv[1:])
