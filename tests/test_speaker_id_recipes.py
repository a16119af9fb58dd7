"""Smoke runs of the TIMIT and LibriSpeech recipes: every yaml, real samples and built fixtures."""

import os

import pytest

from conftest import SHARED_DATA, run_recipe
from test_prepare_timit import write_timit

YAMLS = ["lim_bce.yaml", "lim_mine.yaml", "lim_nce.yaml", "supervised.yaml", "semisupervised.yaml"]
TIMIT_SAMPLE = os.path.join(SHARED_DATA, "TIMIT_sample")
LIBRI_SAMPLE = os.path.join(SHARED_DATA, "LibriSpeech_sample")


def check(results, n_test, out=None):
    (stats,) = results["systems"].values()
    if out is not None:  # every test sentence of the manifest was scored
        with open(os.path.join(out, "save", "test.csv")) as f:
            assert n_test == sum(1 for _ in f) - 1
    assert 0.0 <= stats["sentence_error"] <= 1.0 and 0.0 <= stats["chunk_error"] <= 1.0
    assert stats["sentences"] == n_test and stats["chunks"] > n_test


@pytest.mark.skipif(not os.path.isdir(TIMIT_SAMPLE), reason="../shared/data absent")
@pytest.mark.parametrize("yaml", YAMLS)
def test_timit_sample_every_yaml(yaml, tmp_path):
    extra = [] if yaml == "supervised.yaml" else ["--critic_hidden_size=16"]
    results, _ = run_recipe("TIMIT", yaml, tmp_path / "out", f"--data_folder={TIMIT_SAMPLE}", *extra,
                            pretrain=yaml != "supervised.yaml")
    check(results, 48, tmp_path / "out")  # the 3 SI sentences of the 16 speakers


@pytest.mark.skipif(not os.path.isdir(LIBRI_SAMPLE), reason="../shared/data absent")
@pytest.mark.parametrize("yaml", YAMLS)
def test_librispeech_sample_every_yaml(yaml, tmp_path):
    extra = [] if yaml == "supervised.yaml" else ["--critic_hidden_size=16"]
    results, _ = run_recipe("LibriSpeech", yaml, tmp_path / "out", f"--data_folder={LIBRI_SAMPLE}",
                            "--subsets=[test-other]", *extra, pretrain=yaml != "supervised.yaml")
    (stats,) = results["systems"].values()
    check(results, stats["sentences"], tmp_path / "out")


def test_timit_fixture_end_to_end(tmp_path):
    write_timit(str(tmp_path / "TIMIT"), lower=True, riff=False)
    results, _ = run_recipe("TIMIT", "lim_bce.yaml", tmp_path / "out", f"--data_folder={tmp_path / 'TIMIT'}",
                            "--critic_hidden_size=16")
    check(results, 6, tmp_path / "out")


def test_librispeech_fixture_end_to_end_at_8k(tmp_path):
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    for spk in ("11", "12", "13"):
        folder = tmp_path / "LibriSpeech" / "train-clean-100" / spk / "7"
        os.makedirs(folder)
        for u in range(4):
            sf.write(folder / f"{spk}-7-{u:04d}.flac", 0.1 * rng.standard_normal(24000), 16000)
    results, _ = run_recipe("LibriSpeech", "lim_nce.yaml", tmp_path / "out", f"--data_folder={tmp_path}",
                            "--train_seconds=2.0", "--critic_hidden_size=16", "--sample_rate=8000",
                            "--chunk_size=3000")
    # 4 utterances of 1.5 s per speaker: 2 train (3 s >= 2 s), 1 valid, 1 test
    check(results, 3, tmp_path / "out")


def test_timit_wrong_folder_is_explained(tmp_path):
    (tmp_path / "LibriSpeech").mkdir()
    _, proc = run_recipe("TIMIT", "lim_bce.yaml", tmp_path / "out", f"--data_folder={tmp_path}", expect_ok=False)
    assert proc.returncode != 0
    assert "not a TIMIT root" in proc.stdout + proc.stderr
