#!/usr/bin/env python3
"""TIMIT speaker identification with LIM (Ravanelli & Bengio, 2018).

prepare (SincNet's split: 5 SX train / 3 SI test per speaker, 462 speakers)
-> LIM pretraining without labels -> speaker id (frozen or fine-tuned encoder)
-> sentence-level CER and chunk error on the SI sentences.

Usage:
    python recipes/TIMIT/train.py recipes/TIMIT/hparams/lim_bce.yaml --data_folder=/path/to/TIMIT
"""

import sys

from speechbrain.utils.distributed import run_on_main

from sincmi import stages
from sincmi.prepare.timit import prepare_timit


def prepare(hparams):
    """Writes the TIMIT manifests (once, on the main process)."""
    run_on_main(
        prepare_timit,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["save_folder"],
            "trim_silence": hparams["trim_silence"],
            "normalize_peak": hparams["normalize_peak"],
            "valid_split": hparams["valid_split"],
            "sample_rate": hparams["sample_rate"],
            "min_samples": hparams["chunk_size"],
            "resample": hparams["resample_audio"],
        },
    )


def main(argv):
    hparams, run_opts = stages.start_experiment(argv)
    timings = {}
    prepare(hparams)  # 1. manifests
    manifests, labels = stages.load_speaker_id_data(hparams, hparams["data_folder"])
    # 2. LIM pretraining, 3. speaker id, tested on the SI sentences
    encoder, stats = stages.pretrain_and_identify(hparams, run_opts, manifests, labels, timings)
    stages.report(hparams, {hparams["system_name"]: stats}, timings)  # 4. results.json, training curves
    stages.plot_embeddings(hparams, encoder, manifests["test"], stages.device_of(run_opts))


if __name__ == "__main__":
    main(sys.argv[1:])
