"""Mixed precision as SpeechBrain offers it (``--precision=bf16``), on the CPU: a LIM loss close to
float32's, objectives computed in float32, and a short LIM run that still learns."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from sincmi.discriminator import MLPDiscriminator
from sincmi.encoder import SincNetEncoder
from sincmi.objectives import MINE, InfoNCE
from sincmi.pairs import pair_logits


@pytest.mark.parametrize("implementation", ["reference", "fast"])
@pytest.mark.parametrize("objective", [InfoNCE, MINE])
def test_a_bf16_lim_loss_is_close_to_float32s(implementation, objective):
    torch.manual_seed(0)
    encoder = SincNetEncoder(chunk_size=3200, sinc_filters=16, sinc_kernel=65, conv_channels=[16, 16],
                             conv_kernels=[5, 5], fc_sizes=[64, 64], implementation=implementation).eval()
    critic, loss_fn = MLPDiscriminator(64, hidden_size=32), objective()
    t = torch.arange(3200) / 16000
    anchors = torch.stack([torch.sin(2 * torch.pi * (100 + 30 * i) * t) for i in range(8)]) * 0.3
    positives = anchors.roll(400, dims=1) + 0.01 * torch.randn(8, 3200)
    sentences = [f"s{i}" for i in range(8)]

    def loss(dtype=None):
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            z = encoder(torch.cat([anchors, positives]))
            pos, neg, valid = pair_logits(critic, *z.split(8), sentences)
        assert (z.dtype == torch.bfloat16) == (dtype is not None)  # autocast did lower the precision
        with torch.autocast("cpu", enabled=False):  # as LIMBrain.compute_objectives
            return loss_fn(pos.float(), neg.float(), valid)

    full, half = loss(), loss(torch.bfloat16)
    assert half.dtype == torch.float32
    assert abs(half.item() - full.item()) < 0.05 * abs(full.item()) + 0.02, (full.item(), half.item())


def test_lim_still_learns_under_bf16(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "recipes", "Demo", "train.py"),
           os.path.join(ROOT, "recipes", "Demo", "hparams", "lim_nce.yaml"), f"--output_folder={tmp_path / 'out'}",
           f"--synth_folder={tmp_path / 'corpus'}", "--precision=bf16", "--num_speakers=12",
           "--sentences_per_speaker=6", "--num_verification_speakers=4", "--valid_per_speaker=1",
           "--test_per_speaker=1", "--sinc_filters=16", "--conv_channels=[16,16]", "--embedding_size=64",
           "--fc_sizes=[64,64]", "--pretrain_epochs=4", "--pairs_per_epoch=256", "--pretrain_batch_size=32",
           "--finetune_epochs=1", "--finetune_chunks_per_epoch=64", "--verification_backends=[none]",
           "--score_baselines=False", "--noprogressbar", "--num_workers=0"]
    proc = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    log = (tmp_path / "out" / "train_log.txt").read_text().splitlines()
    losses = [float(line.split("valid loss: ")[1].split(",")[0]) for line in log if "stage: pretrain" in line]
    assert len(losses) == 4 and min(losses[-2:]) < 0.9 * losses[0], losses
    with open(tmp_path / "out" / "results.json") as f:
        results = json.load(f)
    assert results["systems"]["LIM (nce)"]["EER"] < 0.25
