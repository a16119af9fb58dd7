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
    return write_tone_corpus(str(tmp_path / "corpus"))


def python_executable():
    return sys.executable
