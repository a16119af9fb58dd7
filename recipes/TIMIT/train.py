#!/usr/bin/env python3
"""TIMIT speaker identification with LIM (Ravanelli & Bengio, 2018).

prepare (SincNet's split: 5 SX train / 3 SI test per speaker, 462 speakers)
-> LIM pretraining without labels -> speaker id (frozen or fine-tuned encoder)
-> sentence-level CER and chunk error on the SI sentences.

Usage:
    python recipes/TIMIT/train.py recipes/TIMIT/hparams/lim_bce.yaml --data_folder=/path/to/TIMIT
"""

import sys

from sincmi import layout, stages
from sincmi.prepare.timit import prepare_timit


def main(argv):
    hparams, run_opts = stages.start_experiment(argv)
    timings = {}
    stages.prepare(hparams, prepare_timit, timings)  # 1. manifests
    manifests, labels = stages.load_speaker_id_data(hparams, hparams["data_folder"])
    manifests["unlabelled"] = stages.prepare_unlabelled_pool(hparams, timings, [hparams["data_folder"]])  # optional
    stages.stop_after_preparation(hparams)  # --prepare_only=True: manifests only
    encoder = stages.lim_pretraining(hparams, run_opts, manifests, timings)  # 2. no labels
    stats = stages.identify(hparams, run_opts, layout.SPEAKER_ID, encoder, manifests, labels, timings)  # 3. SI test
    stages.report(hparams, {hparams["system_name"]: stats}, timings, run_opts)  # 4. results.json, training curves
    stages.plot_embeddings(hparams, encoder, manifests["test"], stages.device_of(run_opts))


if __name__ == "__main__":
    stages.run(main, sys.argv[1:])
