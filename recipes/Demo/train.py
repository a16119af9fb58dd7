#!/usr/bin/env python3
"""Demo recipe: LIM on a synthetic (or your own) multi-speaker corpus.

prepare -> LIM pretraining (no labels) -> speaker-id probe (CER) ->
verification on unseen speakers (EER, minDCF), with the random-weights
encoder and MFCC statistics scored on the same data, with the same back ends.

Usage:
    python recipes/Demo/train.py recipes/Demo/hparams/lim_nce.yaml
    python recipes/Demo/train.py recipes/Demo/hparams/lim_nce.yaml --data_folder=DIR
"""

import os
import sys
import time

from speechbrain.utils.distributed import run_on_main

from sincmi import data, layout, stages
from sincmi.prepare.folder import prepare_folder
from sincmi.prepare.synth import synthesize_corpus



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
            "resample": hparams["resample_audio"],
            "num_verification_speakers": hparams["num_verification_speakers"],
            "valid_per_speaker": hparams["valid_per_speaker"],
            "test_per_speaker": hparams["test_per_speaker"],
            "max_held_out_share": hparams["max_held_out_share"],
            "max_trials": hparams["max_trials"],
            "seed": hparams["seed"],
        },
    )
    return data_folder


def main(argv):
    hparams, run_opts = stages.start_experiment(argv)
    timings, start = {}, time.time()

    # 1. Prepare
    data_folder = prepare(hparams)
    manifests, labels = stages.load_speaker_id_data(hparams, data_folder)
    timings["prepare"] = time.time() - start

    # 2. Pretrain without labels, 3. speaker id (probe or fine-tuning)
    audio = stages.training_audio(hparams, manifests["train"])  # None unless audio_cache
    encoder, id_stats = stages.pretrain_and_identify(hparams, run_opts, manifests, labels, timings, audio)

    # 4. Verification on unseen speakers; the baselines get stages 3 and 4 too.
    device = stages.device_of(run_opts)
    verification_rows = data.load_manifest(os.path.join(hparams["save_folder"], "verification.csv"), data_folder)
    sets = data.RecipeDatasets(hparams, audio)
    verification_set = sets.sentences(verification_rows)
    speakers = {key: row["spk_id"] for key, row in verification_rows.items()}
    trials = os.path.join(hparams["save_folder"], layout.TRIALS_FILE)
    systems = [(hparams["system_name"], layout.SPEAKER_ID, encoder, id_stats)]
    labelled = data.label_subset(manifests["train"], hparams["label_fraction"], hparams["seed"], hparams["chunk_size"])
    if hparams["score_baselines"]:
        for system, stage_name, model in (
            ("random weights", "speaker_id_random", hparams["random_encoder"]),
            ("MFCC statistics", "speaker_id_mfcc", hparams["mfcc_baseline"]),
        ):
            t = time.time()
            stats = stages.train_speaker_id(
                hparams,
                run_opts,
                stage_name,
                model,
                len(labels),
                sets.chunks(labelled, labels),
                sets.sentences(manifests["valid"], labels),
                sets.sentences(manifests["test"], labels),
                freeze_encoder=True,
            )
            timings[stage_name] = time.time() - t
            systems.append((system, stage_name, model, stats))
    # Back ends are fitted on the training speakers' utterances, without labels.
    training_utterances = sets.sentences({**manifests["train"], **manifests["valid"], **manifests["test"]})
    results = {}
    for system, stage_name, model, stats in systems:
        t = time.time()
        verification = stages.verify(
            model, verification_set, trials, device, hparams["eval_batch_size"], hparams["verification_shift"],
            out_folder=hparams["output_folder"], name=system, speakers=speakers,
            backends=hparams["verification_backends"], backend_set=training_utterances,
        )
        timings[stage_name.replace("speaker_id", "verification")] = time.time() - t
        results.update(stages.result_rows(system, verification, stats))
    timings["total"] = time.time() - start

    # 5. Report: results.json and the table
    stages.report(hparams, results, timings)


if __name__ == "__main__":
    main(sys.argv[1:])
