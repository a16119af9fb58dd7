"""Shared fixtures: tiny speaker folders written by the tests themselves."""

import os
import sys

import numpy as np
import pytest
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")


def write_tone_corpus(folder, speakers=4, utterances=3, seconds=0.5, sample_rate=16000):
    """Writes ``folder/<spk>/<utt>.wav`` with a per-speaker tone plus noise."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    for s in range(speakers):
        os.makedirs(os.path.join(folder, f"spk{s}", "session"), exist_ok=True)
        for u in range(utterances):
            wav = 0.3 * np.sin(2 * np.pi * (150 + 40 * s) * t) + 0.01 * rng.standard_normal(t.size)
            sf.write(os.path.join(folder, f"spk{s}", "session", f"u{u}.wav"), wav, sample_rate)
    return folder


@pytest.fixture
def tone_corpus(tmp_path):
    return write_tone_corpus(str(tmp_path / "corpus"), utterances=4)


def python_executable():
    return sys.executable


# Sizes small enough for a smoke run in seconds; every recipe accepts them.
TINY_MODEL = [
    "--sinc_filters=8",
    "--sinc_kernel=65",
    "--conv_channels=[8,8]",
    "--embedding_size=32",
    "--fc_sizes=[32]",
    "--finetune_epochs=1",
    "--finetune_chunks_per_epoch=16",
    "--finetune_batch_size=8",
    "--eval_shift=1600",
    "--valid_shift=3200",
    "--num_workers=0",
]
# A Demo run small enough for a test and large enough to learn: 16 synthetic speakers, a small encoder.
SMALL_RUN = [
    "--num_speakers=16", "--sentences_per_speaker=6", "--num_verification_speakers=6",
    "--valid_per_speaker=1", "--test_per_speaker=1",
    "--sinc_filters=16", "--conv_channels=[16,16]", "--embedding_size=64", "--fc_sizes=[64,64]",
    "--pretrain_epochs=6", "--pairs_per_epoch=256", "--pretrain_batch_size=32",
    "--verification_backends=[none]", "--noprogressbar",
]

TINY_PRETRAIN = ["--pretrain_epochs=1", "--pairs_per_epoch=16", "--pretrain_batch_size=8"]


def doc_blocks(doc):
    """``(files, commands)`` of a walk-through page: the code blocks marked ``<!-- file: PATH -->`` and
    ``<!-- run -->`` (bash), as written."""
    import re

    with open(doc) as f:
        text = f.read()
    files = dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, re.S))
    return files, re.findall(r"<!-- run -->\n```bash\n(.*?)```", text, re.S)


def walk_through_folder(tmp_path, files):
    """A working folder as a user's: ``recipes/Demo`` (linked), the page's files, and a folder of 6 speakers."""
    work = tmp_path / "work"
    os.makedirs(work / "recipes")
    os.symlink(os.path.join(ROOT, "recipes", "Demo"), work / "recipes" / "Demo")
    for path, text in files.items():
        (work / path).write_text(text)
    return work, write_tone_corpus(str(tmp_path / "speakers"), speakers=6, utterances=4, seconds=0.6)


def failure_report(proc, tail=3000):
    """What a failed subprocess printed: its first traceback (often a loader worker's or another rank's,
    the root cause) and the end of its output, so that a rare failure in CI can be diagnosed from the log."""
    output = proc.stdout + proc.stderr
    first = output.find("Traceback (most recent call last)")
    head = output[max(0, first - 300): first + 2500] + "\n[...]\n" if 0 <= first < len(output) - tail else ""
    return head + output[-tail:]


def run_recipe(recipe, yaml, out, *args, pretrain=True, expect_ok=True):
    """Runs ``recipes/<recipe>/train.py`` on a tiny model; returns (results, process)."""
    import json
    import subprocess

    yaml_path = os.path.join(ROOT, "recipes", recipe, "hparams", yaml)
    with open(yaml_path) as f:
        values = {line.split(":")[0]: line.split(":", 1)[1].split("#")[0].strip() for line in f if line[:1].isalpha()}
    # The tiny sizes apply to the keys this yaml has, and never switch on a stage it leaves off.
    tiny = [a for a in TINY_MODEL + (TINY_PRETRAIN if pretrain else [])
            if a[2:].split("=")[0] in values and values[a[2:].split("=")[0]] != "0"]
    cmd = [sys.executable, os.path.join(ROOT, "recipes", recipe, "train.py"), yaml_path,
           f"--output_folder={out}", *tiny, *args]
    proc = subprocess.run(cmd, cwd=os.path.dirname(str(out)), capture_output=True, text=True, timeout=600)
    if not expect_ok:
        return None, proc
    assert proc.returncode == 0, failure_report(proc)
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f), proc
