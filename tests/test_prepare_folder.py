"""Folder preparation: splits, trials, skipped files and clear errors."""

import csv
import os

import pytest

from sincmi.prepare.folder import prepare_folder
from sincmi.prepare.manifest import read_manifest


def prepare(folder, save, **kwargs):
    opts = dict(num_verification_speakers=2, valid_per_speaker=1, test_per_speaker=1, seed=3)
    opts.update(kwargs)
    prepare_folder(folder, save, **opts)


def test_splits_and_trials(tone_corpus, tmp_path):
    save = str(tmp_path / "save")
    prepare(tone_corpus, save)
    train, valid, test = (read_manifest(os.path.join(save, f"{s}.csv")) for s in ("train", "valid", "test"))
    verification = read_manifest(os.path.join(save, "verification.csv"))
    train_spk = {r["spk_id"] for r in train}
    ver_spk = {r["spk_id"] for r in verification}
    assert len(train_spk) == 2 and len(ver_spk) == 2 and not train_spk & ver_spk
    assert len(train) == 2 and len(valid) == 2 and len(test) == 2  # 3 utts/speaker: 1/1/1
    all_ids = [r["ID"] for r in train + valid + test + verification]
    assert len(all_ids) == len(set(all_ids)) == 12
    assert train[0]["wav"].startswith("$data_root/")
    assert int(train[0]["stop"]) == 8000 and float(train[0]["duration"]) == 0.5
    with open(os.path.join(save, "trials.txt")) as f:
        trials = [line.split() for line in f]
    assert len(trials) == 6 * 5 // 2  # every pair of the 6 verification utterances
    spk = {r["ID"]: r["spk_id"] for r in verification}
    for label, a, b in trials:
        assert int(label) == int(spk[a] == spk[b])


def test_rerun_is_skipped_and_options_change_redoes(tone_corpus, tmp_path):
    save = str(tmp_path / "save")
    prepare(tone_corpus, save)
    stamp = os.path.getmtime(os.path.join(save, "train.csv"))
    prepare(tone_corpus, save)
    assert os.path.getmtime(os.path.join(save, "train.csv")) == stamp
    prepare(tone_corpus, save, seed=4)
    with open(os.path.join(save, "prepare_opts.json")) as f:
        assert '"seed": 4' in f.read()


def test_bad_files_are_skipped_and_listed(tone_corpus, tmp_path):
    import numpy as np
    import soundfile as sf

    bad = os.path.join(tone_corpus, "spk0", "broken.wav")
    with open(bad, "wb") as f:
        f.write(b"RIFF....not audio")
    short = os.path.join(tone_corpus, "spk1", "short.wav")
    sf.write(short, np.zeros(100), 16000)
    save = str(tmp_path / "save")
    prepare(tone_corpus, save)
    with open(os.path.join(save, "skipped.csv")) as f:
        rows = list(csv.DictReader(f))
    reasons = {os.path.basename(r["file"]): r["reason"] for r in rows}
    assert reasons["broken.wav"].startswith("not readable as audio")
    assert reasons["short.wav"].startswith("too short")


def test_missing_folder_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*--data_folder"):
        prepare(str(tmp_path / "nowhere"), str(tmp_path / "save"))


def test_empty_folder_is_explained(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no audio"):
        prepare(str(tmp_path / "empty"), str(tmp_path / "save"))


def test_too_few_speakers_is_explained(tmp_path):
    from conftest import write_tone_corpus

    folder = write_tone_corpus(str(tmp_path / "one"), speakers=1)
    with pytest.raises(ValueError, match="1 speaker.*num_verification_speakers"):
        prepare(folder, str(tmp_path / "save"))
