"""Broken audio files, through every real preparer (folder/Demo, TIMIT, LibriSpeech, VoxCeleb).

Each case puts one bad file into an otherwise good corpus: the preparation
must finish, list the file in ``skipped.csv`` with the reason (or keep it with
a note, for stereo and, with ``resample``, another sample rate), print the
counts, and leave unusable files out of every manifest.
"""

import csv
import glob
import logging
import os

import numpy as np
import pytest
import soundfile as sf

from conftest import write_tone_corpus
from sincmi import data
from sincmi.prepare import manifest
from sincmi.prepare.folder import prepare_folder
from sincmi.prepare.librispeech import prepare_librispeech
from sincmi.prepare.timit import prepare_timit
from sincmi.prepare.voxceleb import prepare_voxceleb
from test_prepare_timit import write_timit

RATE = 16000


def tone(seconds=1.0, rate=RATE, channels=1, seed=0):
    t = np.arange(int(seconds * rate)) / rate
    wav = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    return np.stack([wav] * channels, axis=1) if channels > 1 else wav


def good_wav_bytes(tmp_path):
    path = str(tmp_path / "source.wav")
    sf.write(path, tone(), RATE, subtype="PCM_16")
    with open(path, "rb") as f:
        return f.read()


# Each case: (writer(path, tmp_path), expected reason or note, kept?)
def write_empty(path, tmp):
    open(path, "wb").close()


def write_corrupt_header(path, tmp):
    raw = bytearray(good_wav_bytes(tmp))
    raw[:16] = b"\x00garbage-header!"
    open(path, "wb").write(bytes(raw))


def write_not_audio(path, tmp):
    open(path, "w").write("this is a text file with an audio extension\n")


def write_truncated(path, tmp):
    raw = good_wav_bytes(tmp)
    open(path, "wb").write(raw[: len(raw) * 6 // 10])


def write_short(path, tmp):
    sf.write(path, tone(0.05), RATE)


def write_nan(path, tmp):
    wav = tone().astype(np.float32)
    wav[100], wav[200] = np.nan, np.inf
    sf.write(path, wav, RATE, subtype="FLOAT")


def write_stereo(path, tmp):
    sf.write(path, tone(channels=2), RATE)


def write_8k(path, tmp):
    sf.write(path, tone(rate=8000), 8000)


def write_unreadable(path, tmp):
    sf.write(path, tone(), RATE)
    os.chmod(path, 0)


CASES = {
    "empty": (write_empty, "empty file", False),
    "corrupt_header": (write_corrupt_header, "not readable as audio", False),
    "not_audio": (write_not_audio, "not readable as audio", False),
    "truncated": (write_truncated, "truncated", False),
    "short": (write_short, "too short", False),
    "nan_inf": (write_nan, "NaN or infinite", False),
    "stereo": (write_stereo, "2 channels: down-mixed", True),
    "other_rate_rejected": (write_8k, "sample rate 8000 Hz, expected 16000 Hz", False),
    "other_rate_resampled": (write_8k, "resampled to 16000 Hz", True),
    "no_read_permission": (write_unreadable, "no read permission", False),
}


def folder_corpus(tmp):
    root = write_tone_corpus(str(tmp / "corpus"), speakers=6, utterances=4, seconds=0.6)
    bad = os.path.join(root, "spk0", "session", "bad.wav")

    def prepare(save, resample):
        prepare_folder(root, save, min_samples=3200, num_verification_speakers=2, valid_per_speaker=1,
                       test_per_speaker=1, resample=resample)

    return bad, prepare, root


def timit_corpus(tmp):
    root = str(tmp / "TIMIT")
    write_timit(root)
    folder = os.path.join(root, "TRAIN", "DR1", "FAKS0")
    with open(os.path.join(folder, "SX9.WRD"), "w") as f:
        f.write("1000 6000 hello\n6000 15000 world\n")

    def prepare(save, resample):
        prepare_timit(root, save, resample=resample)

    return os.path.join(folder, "SX9.WAV"), prepare, root


def librispeech_corpus(tmp):
    root = tmp / "LibriSpeech" / "train-clean-100"
    for s, spk in enumerate(("19", "26", "103")):
        for chapter in ("198", "495"):
            os.makedirs(root / spk / chapter)
            for u in range(3):
                sf.write(root / spk / chapter / f"{spk}-{chapter}-{u:04d}.flac", tone(1.0 + u, seed=s), RATE)

    def prepare(save, resample):
        prepare_librispeech(str(tmp), save, train_seconds=4.0, test_per_speaker=2, resample=resample)

    return str(root / "19" / "198" / "19-198-0099.wav"), prepare, str(tmp)


def voxceleb_corpus(tmp):
    root = tmp / "VoxCeleb1"
    trial_utts = []
    for s in range(7):
        spk = f"id1{s:04d}"
        for u in range(4):
            rel = f"{spk}/video{u // 2}/{u:05d}.wav"
            os.makedirs(root / "wav" / os.path.dirname(rel), exist_ok=True)
            sf.write(root / "wav" / rel, tone(1.0, seed=10 * s + u), RATE)
            if s < 3:
                trial_utts.append(rel)
    lines = [f"{int(a.split('/')[0] == b.split('/')[0])} {a} {b}\n"
             for i, a in enumerate(trial_utts) for b in trial_utts[i + 1:]]
    (root / "veri_test2.txt").write_text("".join(lines))
    os.makedirs(root / "wav" / "id10006" / "video9")

    def prepare(save, resample):
        prepare_voxceleb(str(root), save, valid_speakers=1, resample=resample)

    return str(root / "wav" / "id10006" / "video9" / "00099.wav"), prepare, {"voxceleb1": str(root), "voxceleb2": ""}


PREPARERS = {"folder": folder_corpus, "timit": timit_corpus, "librispeech": librispeech_corpus,
             "voxceleb": voxceleb_corpus}


def manifest_paths(save):
    paths = []
    for name in glob.glob(os.path.join(save, "*.csv")):
        if os.path.basename(name) == "skipped.csv":
            continue
        with open(name, newline="") as f:
            paths += [row["wav"] for row in csv.DictReader(f)]
    return paths


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("preparer", list(PREPARERS))
def test_bad_file_is_reported_and_preparation_goes_on(preparer, case, tmp_path, monkeypatch, caplog):
    writer, expected, kept = CASES[case]
    if preparer == "voxceleb" and case == "other_rate_resampled":
        expected, kept = "sample rate 8000 Hz, expected 16000 Hz", False  # training segments: never resampled
    bad, prepare, data_root = PREPARERS[preparer](tmp_path)
    writer(bad, tmp_path)
    if case == "no_read_permission" and os.access(bad, os.R_OK):  # root reads anything: act as a user
        real_access = os.access
        monkeypatch.setattr(manifest.os, "access", lambda p, mode: False if p == bad else real_access(p, mode))
    save = str(tmp_path / "save")
    with caplog.at_level(logging.INFO):
        prepare(save, resample=case == "other_rate_resampled")

    with open(os.path.join(save, "skipped.csv"), newline="") as f:
        report = {row["file"]: row for row in csv.DictReader(f)}
    assert bad in report, f"{bad} is not in the report: {list(report)}"
    assert expected in report[bad]["reason"]
    assert report[bad]["action"] == ("kept" if kept else "skipped")
    listed = [p for p in manifest_paths(save) if os.path.basename(p) == os.path.basename(bad)]
    assert bool(listed) == kept
    if not kept:
        assert "Skipped 1 audio file(s)" in caplog.text  # the count is printed
    else:  # the kept file reads as mono at the recipe's rate
        rows = {}
        for name in glob.glob(os.path.join(save, "*.csv")):
            if os.path.basename(name) not in ("skipped.csv",):
                rows.update({key: row for key, row in data.load_manifest(name, data_root).items()
                             if os.path.abspath(row["wav"]) == os.path.abspath(bad)})
        assert rows
        sig = data.sentence_dataset(rows)[0]["sig"]
        assert sig.dim() == 1
        if preparer in ("timit", "librispeech"):  # trimmed to the speech
            assert sig.shape[0] >= 3200
        else:
            assert abs(sig.shape[0] - sf.info(bad).frames * RATE // sf.info(bad).samplerate) <= 2
