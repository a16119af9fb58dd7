#!/usr/bin/env python3
"""Demo recipe: LIM on a synthetic (or your own) multi-speaker corpus.

prepare -> LIM pretraining (no labels) [-> pseudo-label rounds] -> speaker-id probe (CER) ->
verification on unseen speakers (EER, minDCF), with the random-weights
encoder and MFCC statistics scored on the same data, with the same back ends.

Usage:
    python recipes/Demo/train.py recipes/Demo/hparams/lim_nce.yaml
    python recipes/Demo/train.py recipes/Demo/hparams/lim_nce.yaml --data_folder=DIR
"""

import sys

from sincmi import layout, stages
from sincmi.prepare.folder import prepare_folder
from sincmi.prepare.synth import synthesize_corpus


def main(argv):
    hparams, run_opts = stages.start_experiment(argv)
    timings = {}

    # 1. Prepare: your folder (--data_folder), or the synthetic corpus written once
    data_folder = hparams["data_folder"]
    if data_folder is None:
        data_folder = hparams["synth_folder"]
        stages.prepare(hparams, synthesize_corpus, timings, folder=data_folder)
    stages.prepare(hparams, prepare_folder, timings, data_folder=data_folder)
    manifests, labels = stages.load_speaker_id_data(hparams, data_folder)
    # ... and recordings without speakers for LIM (--unlabelled_folder), never those of data_folder
    manifests["unlabelled"] = stages.prepare_unlabelled_pool(hparams, timings, [data_folder])
    stages.stop_after_preparation(hparams)  # --prepare_only=True: manifests only

    # 2. Pretrain without labels, 3. speaker id (probe or fine-tuning)
    audio = stages.training_audio(hparams, manifests["train"])  # None unless audio_cache
    encoder = stages.lim_pretraining(hparams, run_opts, manifests, timings, audio)
    # ... optionally fine-tuned on clusters of its own embeddings (pseudo_label_rounds; labels unused)
    purities = stages.pseudo_label_training(hparams, run_opts, encoder, manifests, timings, audio)
    id_stats = stages.identify(hparams, run_opts, layout.SPEAKER_ID, encoder, manifests, labels, timings, audio=audio)
    if purities:  # a diagnostic in results.json: how close the clusters came to the true speakers
        id_stats["pseudo_label_purity"] = purities
    systems, stats = {hparams["system_name"]: encoder}, {hparams["system_name"]: id_stats}
    if hparams["score_baselines"]:  # the baselines get the same speaker-id probe
        for name, stage, model, counter in (
            ("random weights", "speaker_id_random", hparams["random_encoder"], "random_probe_epoch_counter"),
            ("MFCC statistics", "speaker_id_mfcc", hparams["mfcc_baseline"], "mfcc_probe_epoch_counter"),
        ):
            systems[name] = model
            stats[name] = stages.identify(hparams, run_opts, stage, model, manifests, labels, timings,
                                          freeze_encoder=True, audio=audio, epoch_counter=counter)

    # 4. Verification on unseen speakers, every system with the same back ends,
    #    fitted on the training speakers' utterances without their labels
    rows = stages.load_manifests(hparams, data_folder, ["verification"])["verification"]
    training_rows = {**manifests["train"], **manifests["valid"], **manifests["test"]}
    # With score_norm (e.g. as-norm) the training speakers' utterances are the cohort too
    cohort = training_rows if hparams["score_norm"] else None
    results = stages.verification(hparams, run_opts, systems, rows, training_rows, timings, stats, audio=audio,
                                  cohort_rows=cohort)

    # 5. Report: results.json and the table
    stages.report(hparams, results, timings, run_opts)


if __name__ == "__main__":
    stages.run(main, sys.argv[1:])
