"""Smoke runs of the Demo recipe on tiny configurations (a minute or two in all)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, write_tone_corpus

TINY = [
    "--num_speakers=8",
    "--sentences_per_speaker=5",
    "--num_verification_speakers=3",
    "--valid_per_speaker=1",
    "--test_per_speaker=1",
    "--sinc_filters=8",
    "--sinc_kernel=65",
    "--conv_channels=[8,8]",
    "--embedding_size=32",
    "--fc_sizes=[32]",
    "--finetune_epochs=1",
    "--finetune_chunks_per_epoch=16",
    "--finetune_batch_size=8",
    "--eval_shift=1600",
]
TINY_PRETRAIN = ["--pretrain_epochs=1", "--pairs_per_epoch=16", "--pretrain_batch_size=8"]


def run_recipe(yaml, tmp, *extra):
    out = os.path.join(tmp, "out")
    cmd = [sys.executable, os.path.join(ROOT, "recipes", "Demo", "train.py"),
           os.path.join(ROOT, "recipes", "Demo", "hparams", yaml),
           f"--output_folder={out}", *TINY, *extra]
    if yaml != "supervised.yaml":
        cmd += TINY_PRETRAIN
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f), proc


@pytest.fixture(scope="module")
def synth_folder(tmp_path_factory):
    return str(tmp_path_factory.mktemp("corpus") / "synth")


@pytest.mark.parametrize("yaml", ["lim_nce.yaml", "lim_bce.yaml", "lim_mine.yaml", "supervised.yaml"])
def test_demo_yaml_runs_end_to_end(yaml, synth_folder, tmp_path):
    results, proc = run_recipe(yaml, str(tmp_path), f"--synth_folder={synth_folder}")
    systems = results["systems"]
    assert systems, "no system was scored"
    for values in systems.values():
        for key in ("EER", "minDCF_0.01", "sentence_error", "chunk_error"):
            assert 0.0 <= values[key] <= 1.0 if key != "minDCF_0.01" else values[key] >= 0.0
        assert values["target_trials"] > 0 and values["nontarget_trials"] > 0
    if yaml != "supervised.yaml":
        assert set(systems) == {f"LIM ({yaml[4:-5]})", "random weights", "mean MFCC"}
    assert "EER %" in proc.stdout  # the table is printed


def test_demo_on_a_user_folder_and_rerun_resumes(tmp_path):
    folder = write_tone_corpus(str(tmp_path / "mine"), speakers=6, utterances=4, seconds=0.6)
    args = ["--data_folder=" + folder]
    first, _ = run_recipe("lim_nce.yaml", str(tmp_path), *args)
    # A second run finds every stage finished and only re-evaluates: same numbers.
    second, proc = run_recipe("lim_nce.yaml", str(tmp_path), *args)
    assert second["systems"] == first["systems"]
    assert "Going into epoch" not in proc.stderr + proc.stdout


def test_demo_missing_data_folder_is_explained(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "recipes", "Demo", "train.py"),
           os.path.join(ROOT, "recipes", "Demo", "hparams", "lim_nce.yaml"),
           f"--output_folder={tmp_path / 'out'}", f"--data_folder={tmp_path / 'missing'}"]
    proc = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "does not exist" in proc.stderr + proc.stdout
