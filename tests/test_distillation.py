"""Self-distillation (DINO) on LIM's pairs: the loss by hand, the centre, the teacher's moving average, a run."""

import glob
import math
import os
import subprocess
import sys

import torch

from conftest import run_recipe, write_tone_corpus
from sincmi.distillation import DINOHead, SelfDistillation, distillation_loss


def test_distillation_loss_is_each_views_cross_entropy_against_the_other_views_teacher():
    torch.manual_seed(0)
    student, teacher, center = torch.randn(6, 5), torch.randn(6, 5), torch.randn(5)
    loss = distillation_loss(student, teacher, center, 0.1, 0.04)
    total = 0.0
    for i in range(6):
        other = (i + 3) % 6  # row i's sentence's other chunk: rows are [first chunks; second chunks]
        target = [math.exp((teacher[other, k] - center[k]) / 0.04) for k in range(5)]
        target = [t / sum(target) for t in target]
        log_norm = math.log(sum(math.exp(student[i, k] / 0.1) for k in range(5)))
        total += -sum(target[k] * (student[i, k] / 0.1 - log_norm) for k in range(5))
    assert math.isclose(loss.item(), total / 6, rel_tol=1e-5)


def test_the_centre_moves_in_training_only():
    dino = SelfDistillation(prototypes=4, center_momentum=0.9)
    teacher = torch.tensor([[1.0, 0.0, 0.0, 2.0], [3.0, 0.0, 0.0, 0.0]])
    dino.eval()
    dino(torch.zeros(2, 4), teacher)
    assert torch.equal(dino.center, torch.zeros(4))
    dino.train()
    dino(torch.zeros(2, 4), teacher)
    assert torch.allclose(dino.center, torch.tensor([0.2, 0.0, 0.0, 0.1]))
    dino(torch.zeros(2, 4), teacher)
    assert torch.allclose(dino.center, 0.9 * torch.tensor([0.2, 0.0, 0.0, 0.1]) + 0.1 * teacher.mean(0))


def test_the_teacher_is_a_frozen_moving_average_of_the_student():
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    head = DINOHead(input_size=4, hidden_size=8, bottleneck_size=2, prototypes=5)
    dino = SelfDistillation(prototypes=5, teacher_momentum=0.9)
    dino.init_teacher(encoder, head)
    assert not any(p.requires_grad for p in dino.teacher.parameters())
    before = [p.clone() for p in dino.teacher.parameters()]
    with torch.no_grad():
        for p in list(encoder.parameters()) + list(head.parameters()):
            p.add_(1.0)
    encoder(torch.randn(8, 3))  # moves the BatchNorm's running statistics
    dino.update_teacher(encoder, head)
    students = list(encoder.parameters()) + list(head.parameters())
    for old, new, student in zip(before, dino.teacher.parameters(), students):
        assert torch.allclose(new, 0.9 * old + 0.1 * student)
    assert torch.equal(dino.teacher["encoder"][1].running_mean, encoder[1].running_mean)
    chunks = torch.randn(4, 3)
    logits = dino.teacher_logits(chunks)
    assert logits.shape == (4, 5) and not logits.requires_grad


def test_the_demo_pretrains_by_self_distillation_and_scores_it(tmp_path):
    folder = write_tone_corpus(str(tmp_path / "mine"), speakers=8, utterances=4, seconds=0.6)
    args = ["--data_folder=" + folder, "--num_verification_speakers=3", "--valid_per_speaker=1",
            "--test_per_speaker=1", "--score_baselines=False", "--dino_prototypes=16",
            "--pretrain_epochs=3", "--pairs_per_epoch=16", "--pretrain_batch_size=8"]
    results, proc = run_recipe("Demo", "dino.yaml", tmp_path / "out", *args, pretrain=False)
    row = results["systems"]["DINO"]
    assert 0.0 <= row["EER"] <= 1.0
    assert "self-distillation (dino)" in proc.stdout + proc.stderr
    checkpoints = [c for c in os.listdir(tmp_path / "out" / "save" / "pretrain") if c.startswith("CKPT+")]
    assert len(checkpoints) == 1  # the last epoch's, whatever its validation loss
    with open(tmp_path / "out" / "save" / "pretrain" / checkpoints[0] / "counter.ckpt") as f:
        assert f.read().strip() == "3"
    state = torch.load(tmp_path / "out" / "save" / "pretrain" / checkpoints[0] / "objective.ckpt")
    assert any(key.startswith("teacher.encoder.") for key in state) and state["center"].shape == (16,)
    assert state["center"].abs().sum() > 0  # it moved in training
    model = tmp_path / "model"
    for command in (["export", str(tmp_path / "out"), str(model)],
                    ["verify", str(model), *sorted(glob.glob(os.path.join(folder, "*", "*", "*.wav")))[:2]]):
        done = subprocess.run([sys.executable, "-m", "sincmi", *command], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    assert "log-likelihood ratio" in done.stdout
