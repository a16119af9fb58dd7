"""LIM learns: on a small synthetic corpus, a short run of the Demo's main yaml must
lower its validation loss, raise its pair accuracy and give embeddings that beat
the same encoder with random weights. A run whose encoder gets no gradient from
the objective fails here (the other tests only check that figures are in range).
"""

import json
import os
import subprocess
import sys

import pytest

import conftest
from conftest import ROOT
from sincmi.plots import read_train_log

SMALL_RUN = [*conftest.SMALL_RUN, "--finetune_epochs=2", "--finetune_chunks_per_epoch=256"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("learning")
    out = folder / "out"
    cmd = [sys.executable, os.path.join(ROOT, "recipes", "Demo", "train.py"),
           os.path.join(ROOT, "recipes", "Demo", "hparams", "lim_nce.yaml"),
           f"--output_folder={out}", f"--synth_folder={folder / 'corpus'}", *SMALL_RUN]
    proc = subprocess.run(cmd, cwd=str(folder), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "results.json") as f:
        return out, json.load(f)


def test_lim_validation_loss_falls_and_pair_accuracy_rises(small_run):
    out, _ = small_run
    series = read_train_log(out / "train_log.txt")["pretrain"]
    _, losses = series["valid loss"]
    _, accuracy = series["valid pair_accuracy"]
    assert len(losses) == 6
    # Measured (2 threads): loss 3.89 -> 2.57, accuracy 0.59 -> 0.79.
    assert min(losses[-2:]) < 0.85 * losses[0], losses
    assert max(accuracy[-2:]) > accuracy[0] + 0.1, accuracy


def test_lim_beats_the_random_weights_encoder(small_run):
    _, results = small_run
    systems = results["systems"]
    lim, random = systems["LIM (nce)"], systems["random weights"]
    # Measured (2 threads): EER 4.3 % against 20.0 %, CER 60 % against 90 %.
    assert lim["EER"] < 0.5 * random["EER"], (lim["EER"], random["EER"])
    assert lim["sentence_error"] < random["sentence_error"]
    # The same trials for every system: the comparison is paired.
    for name in ("random weights", "MFCC statistics"):
        assert (systems[name]["target_trials"], systems[name]["nontarget_trials"]) == \
            (lim["target_trials"], lim["nontarget_trials"])
