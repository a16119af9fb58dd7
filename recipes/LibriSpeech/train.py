#!/usr/bin/env python3
"""LibriSpeech speaker identification with LIM (Ravanelli & Bengio, 2018).

prepare (SincNet's split: a fixed amount of training audio per speaker, the
rest for test) -> LIM pretraining without labels -> speaker id (frozen or
fine-tuned encoder) -> sentence-level CER and chunk error on the test set.

Usage:
    python recipes/LibriSpeech/train.py recipes/LibriSpeech/hparams/lim_bce.yaml \\
        --data_folder=/path/to/LibriSpeech
"""

import sys

from speechbrain.utils.distributed import run_on_main

from sincmi import stages
from sincmi.prepare.librispeech import prepare_librispeech


def prepare(hparams):
    """Writes the LibriSpeech manifests (once, on the main process)."""
    run_on_main(
        prepare_librispeech,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["save_folder"],
            "subsets": hparams["subsets"],
            "train_seconds": hparams["train_seconds"],
            "valid_per_speaker": hparams["valid_per_speaker"],
            "test_per_speaker": hparams["test_per_speaker"],
            "trim_silence": hparams["trim_silence"],
            "normalize_peak": hparams["normalize_peak"],
            "sample_rate": hparams["file_sample_rate"],
            "min_samples": hparams["chunk_size"] * hparams["file_sample_rate"] // hparams["sample_rate"],
            "resample": hparams["resample_audio"],
            "seed": hparams["seed"],
        },
    )


def main(argv):
    hparams, run_opts = stages.start_experiment(argv)
    timings = {}
    prepare(hparams)  # 1. manifests
    manifests, labels = stages.load_speaker_id_data(hparams, hparams["data_folder"])
    # 2. LIM pretraining, 3. speaker id, tested on each speaker's held-out utterances
    encoder, stats = stages.pretrain_and_identify(hparams, run_opts, manifests, labels, timings)
    stages.report(hparams, {hparams["system_name"]: stats}, timings)  # 4. results.json, training curves
    stages.plot_embeddings(hparams, encoder, manifests["test"], stages.device_of(run_opts))


if __name__ == "__main__":
    main(sys.argv[1:])
