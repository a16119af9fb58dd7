"""Interruption: kill -9 in the middle of a stage, run the same command again.

The resumed run must finish with exactly the figures of a run that was never
interrupted (same seed, CPU, ``num_workers=0``): checkpoints inside an epoch
carry the model, optimiser, epoch, position in the epoch and the random
generators' state, and are written atomically.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY_MODEL, write_tone_corpus
from sincmi.checkpoints import PARTIAL, AtomicCheckpointer, RandomState


def demo_command(corpus, out, yaml="lim_nce.yaml"):
    return [
        sys.executable, os.path.join(ROOT, "recipes", "Demo", "train.py"),
        os.path.join(ROOT, "recipes", "Demo", "hparams", yaml),
        f"--output_folder={out}", f"--data_folder={corpus}",
        *[a for a in TINY_MODEL if not a.startswith(("--finetune_", "--num_workers"))], "--num_workers=0",
        "--num_verification_speakers=2", "--valid_per_speaker=1", "--test_per_speaker=1",
        "--score_baselines=False", "--pretrain_epochs=2", "--pairs_per_epoch=96", "--pretrain_batch_size=4",
        "--finetune_epochs=2", "--finetune_chunks_per_epoch=96", "--finetune_batch_size=4",
        "--ckpt_interval_minutes=0", "--ckpt_interval_steps=1",
    ]


def checkpoints(folder):
    if not os.path.isdir(folder):
        return []
    return [name for name in os.listdir(folder) if name.startswith("CKPT+")]


def logged_epochs(out, stage):
    path = os.path.join(out, "train_log.txt")
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        return sum(line.startswith(f"stage: {stage},") for line in f)


def run_until_checkpoint_then_kill(cmd, folder, cwd):
    """Starts ``cmd`` and SIGKILLs it once ``folder`` holds a checkpoint; returns False if it ended first."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if checkpoints(folder):
            time.sleep(random.Random(len(folder)).uniform(0.0, 0.3))  # somewhere in the middle of the stage
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    proc.wait()
    return False


def test_kill_9_in_pretraining_and_in_speaker_id_then_resume_gives_the_same_results(tmp_path):
    corpus = write_tone_corpus(str(tmp_path / "corpus"), speakers=6, utterances=4, seconds=0.6)
    reference = tmp_path / "uninterrupted"
    proc = subprocess.run(demo_command(corpus, reference), cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = tmp_path / "killed"
    cmd = demo_command(corpus, out)
    assert run_until_checkpoint_then_kill(cmd, str(out / "save" / "pretrain"), str(tmp_path))
    assert logged_epochs(out, "pretrain") < 2  # killed before pretraining ended
    manifest_time = os.path.getmtime(out / "save" / "train.csv")
    assert run_until_checkpoint_then_kill(cmd, str(out / "save" / "speaker_id"), str(tmp_path))
    assert logged_epochs(out, "pretrain") == 2 and logged_epochs(out, "speaker_id") < 2
    assert not os.path.exists(out / "results.json")
    proc = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    with open(reference / "results.json") as f:
        expected = json.load(f)["systems"]
    with open(out / "results.json") as f:
        resumed = json.load(f)["systems"]
    assert resumed == expected
    assert os.path.getmtime(out / "save" / "train.csv") == manifest_time  # not prepared again
    with open(out / "train_log.txt") as f:
        epochs = [line.split(" - ")[0] for line in f]
    with open(reference / "train_log.txt") as f:
        assert epochs == [line.split(" - ")[0] for line in f]  # every epoch logged once


def test_self_distillation_killed_in_pretraining_resumes_its_teacher_and_centre(tmp_path):
    corpus = write_tone_corpus(str(tmp_path / "corpus"), speakers=6, utterances=4, seconds=0.6)
    reference, out = tmp_path / "uninterrupted", tmp_path / "killed"
    proc = subprocess.run(demo_command(corpus, reference, "dino.yaml"), cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cmd = demo_command(corpus, out, "dino.yaml")
    assert run_until_checkpoint_then_kill(cmd, str(out / "save" / "pretrain"), str(tmp_path))
    assert logged_epochs(out, "pretrain") < 2
    proc = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(reference / "results.json") as f, open(out / "results.json") as g:
        assert json.load(g)["systems"] == json.load(f)["systems"]


def test_a_checkpoint_killed_while_saving_is_never_loaded(tmp_path):
    class Failing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(2))

    good = torch.nn.Linear(2, 2)
    checkpointer = AtomicCheckpointer(tmp_path, recoverables={"model": good})
    checkpointer.save_checkpoint(meta={"step": 1})

    def crash(obj, path):
        raise KeyboardInterrupt("killed while saving")

    broken = AtomicCheckpointer(tmp_path, recoverables={"model": good, "other": Failing()},
                                custom_save_hooks={"other": crash})
    with pytest.raises(KeyboardInterrupt):
        broken.save_checkpoint(meta={"step": 2})
    assert any(name.startswith(PARTIAL) for name in os.listdir(tmp_path))  # the half-written folder
    assert [c.meta["step"] for c in broken.list_checkpoints()] == [1]
    # The next checkpointer on this folder removes the leftover.
    AtomicCheckpointer(tmp_path, recoverables={"model": good})
    assert not any(name.startswith(PARTIAL) for name in os.listdir(tmp_path))


def test_random_state_round_trip(tmp_path):
    state, path = RandomState(), str(tmp_path / "rng.ckpt")
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state.save(path)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    state.load(path)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
