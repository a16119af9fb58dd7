"""The unlabelled pool: recordings without speakers for LIM, never the labelled corpus's audio."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import run_recipe, write_tone_corpus
from sincmi import data
from sincmi.prepare.unlabelled import REPORT, prepare_unlabelled
from test_prepare_timit import write_timit


def write_pool(folder, labelled):
    """A pool in no speaker layout: new recordings, a copy and a link of labelled files, and bad files."""
    rng = np.random.default_rng(1)
    os.makedirs(os.path.join(folder, "day1", "session"))
    for i in range(3):
        sf.write(os.path.join(folder, "day1", "session", f"rec{i}.wav"), 0.1 * rng.standard_normal(33600), 16000)  # 2.1 s
    os.makedirs(os.path.join(folder, "day2"))
    shutil.copy(os.path.join(labelled, "spk5", "session", "u0.wav"), os.path.join(folder, "day2", "copy.wav"))
    os.symlink(os.path.join(labelled, "spk4", "session", "u1.wav"), os.path.join(folder, "day2", "link.wav"))
    open(os.path.join(folder, "day2", "empty.wav"), "wb").close()
    with open(os.path.join(folder, "day2", "notes.flac"), "w") as f:
        f.write("not audio")
    sf.write(os.path.join(folder, "day2", "short.wav"), np.zeros(100), 16000)


def test_the_pool_leaves_out_labelled_audio_and_lists_bad_files(tmp_path):
    labelled = write_tone_corpus(str(tmp_path / "labelled"), speakers=6, utterances=3)
    pool = str(tmp_path / "pool")
    write_pool(pool, labelled)
    files = [os.path.join(r, n) for r, _, ns in os.walk(labelled) for n in ns]
    summary = prepare_unlabelled(pool, str(tmp_path / "save"), files, unlabelled_segment_seconds=1.0)
    assert summary == {"files": 3, "segments": 6, "hours": pytest.approx(3 * 2.1 / 3600), "excluded": 2,
                       "skipped": 3}
    report = {os.path.basename(row.split(",")[0]): row for row in open(tmp_path / "save" / REPORT).read().splitlines()[1:]}
    assert "a copy of the labelled file" in report["copy.wav"] and report["copy.wav"].endswith("excluded")
    assert "same file" in report["link.wav"] and report["link.wav"].endswith("excluded")
    for bad in ("empty.wav", "notes.flac", "short.wav"):
        assert report[bad].endswith("skipped"), bad
    rows = data.load_manifest(str(tmp_path / "save" / "unlabelled.csv"), "")
    # 2.1 s files in segments of 1 s: 1 s and 1.1 s (a last piece under one chunk joins the one before)
    assert sorted(row["stop"] - row["start"] for row in rows.values()) == [16000, 16000, 16000, 17600, 17600, 17600]
    assert len({row["sentence"] for row in rows.values()}) == 3  # each file is its own source of positives
    # A second call with the same options does nothing
    assert prepare_unlabelled(pool, str(tmp_path / "save"), files, unlabelled_segment_seconds=1.0) is None


MEMORY_SCRIPT = """
import resource, sys
import torch
from sincmi import data
from sincmi.prepare.unlabelled import prepare_unlabelled
if sys.argv[1] == "pool":
    prepare_unlabelled(sys.argv[2], sys.argv[3], [], unlabelled_segment_seconds=10.0)
    rows = data.load_manifest(sys.argv[3] + "/unlabelled.csv", "")
    pairs = data.pair_dataset(rows, 3200)
    for i in range(0, len(rows), 37):
        item = pairs[i]
        assert item["anchor"].shape == (3200,) and item["sentence"] == rows[item["id"]]["sentence"]
    print("segments", len(rows))
print("peak_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def test_a_one_hour_recording_is_read_in_bounded_memory(tmp_path):
    os.makedirs(tmp_path / "pool")
    path = tmp_path / "pool" / "hour.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=16000, channels=1, subtype="PCM_16") as f:
        for _ in range(60):  # one minute at a time
            f.write((0.1 * rng.standard_normal(16000 * 60)).astype(np.float32))
    script = tmp_path / "memory.py"
    script.write_text(MEMORY_SCRIPT)

    def peak(*args):
        proc = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout, float(proc.stdout.split("peak_mb")[1])

    _, baseline = peak("imports")
    output, used = peak("pool", tmp_path / "pool", tmp_path / "save")
    assert "segments 360" in output  # 3600 s in segments of 10 s
    # The file is 230 MB as float32: reading it whole would show. Header checks, a scan a minute
    # at a time and chunk reads stay far below that.
    assert used - baseline < 60, (baseline, used)


def test_the_demo_pretrains_on_a_labelled_folder_plus_a_pool(tmp_path):
    labelled = write_tone_corpus(str(tmp_path / "labelled"), speakers=6, utterances=4, seconds=0.6)
    pool = str(tmp_path / "pool")
    write_pool(pool, labelled)
    common = [f"--data_folder={labelled}", f"--unlabelled_folder={pool}", "--num_verification_speakers=2",
              "--valid_per_speaker=1", "--test_per_speaker=1", "--score_baselines=False",
              "--unlabelled_segment_seconds=1.0"]
    results, proc = run_recipe("Demo", "lim_nce.yaml", tmp_path / "out", *common)
    log = open(tmp_path / "out" / "log.txt").read()
    assert "2 file(s) excluded as audio of the labelled corpus" in log
    assert "(6 of the segments from the unlabelled pool)" in log
    assert results["systems"]["LIM (nce)"]["target_trials"] > 0
    # The pool alone
    results, _ = run_recipe("Demo", "lim_nce.yaml", tmp_path / "pool_only", *common, "--pretrain_data=none")
    log = open(tmp_path / "pool_only" / "log.txt").read()
    assert "LIM pretrains on 6 segments" in log
    _, proc = run_recipe("Demo", "lim_nce.yaml", tmp_path / "none", f"--data_folder={labelled}",
                         "--pretrain_data=none", expect_ok=False)
    assert proc.returncode != 0 and "needs an unlabelled pool" in proc.stdout + proc.stderr


def write_calls(pool, count=2):
    """A flat folder of recordings: the pool the TIMIT, LibriSpeech and VoxCeleb tests add."""
    os.makedirs(pool)
    rng = np.random.default_rng(2)
    for i in range(count):
        sf.write(os.path.join(pool, f"call{i}.flac"), 0.1 * rng.standard_normal(48000), 16000)
    return pool


def test_the_timit_and_librispeech_recipes_take_a_pool(tmp_path):
    pool = write_calls(str(tmp_path / "pool"))
    rng = np.random.default_rng(3)
    write_timit(str(tmp_path / "TIMIT"), lower=True, riff=False)
    run_recipe("TIMIT", "lim_nce.yaml", tmp_path / "timit", f"--data_folder={tmp_path / 'TIMIT'}",
               f"--unlabelled_folder={pool}", "--critic_hidden_size=16")
    assert "(2 of the segments from the unlabelled pool)" in open(tmp_path / "timit" / "log.txt").read()
    for spk in ("11", "12", "13"):
        folder = tmp_path / "libri_data" / "LibriSpeech" / "train-clean-100" / spk / "7"
        os.makedirs(folder)
        for u in range(4):
            sf.write(folder / f"{spk}-7-{u:04d}.flac", 0.1 * rng.standard_normal(24000), 16000)
    run_recipe("LibriSpeech", "lim_nce.yaml", tmp_path / "libri", f"--data_folder={tmp_path / 'libri_data'}",
               f"--unlabelled_folder={pool}", "--train_seconds=2.0", "--critic_hidden_size=16")
    assert "(2 of the segments from the unlabelled pool)" in open(tmp_path / "libri" / "log.txt").read()


def test_same_sized_recordings_are_told_apart_without_hashing_them_whole(tmp_path, monkeypatch):
    """A pool of WAV files of the labelled files' size: copies are found, other recordings are told apart by
    the cheap content key, and only a copy's bytes are hashed in full."""
    from sincmi.prepare import unlabelled

    rng = np.random.default_rng(0)
    labelled, pool = [], []
    for i in range(3):
        wav = (0.1 * rng.standard_normal(48000)).astype("float32")
        for folder, names in (("labelled", labelled), ("pool", pool)):
            os.makedirs(tmp_path / folder, exist_ok=True)
            path = str(tmp_path / folder / f"f{i}.wav")
            sf.write(path, wav if folder == "labelled" or i == 0 else -wav, 16000, subtype="PCM_16")
            names.append(path)
    hashed = []
    real_digest = unlabelled.file_digest
    monkeypatch.setattr(unlabelled, "file_digest", lambda path: hashed.append(path) or real_digest(path))
    overlap = unlabelled.overlapping_files(pool, labelled)
    assert list(overlap) == [pool[0]] and "a copy of the labelled file" in overlap[pool[0]]
    assert sorted(hashed) == sorted([pool[0], labelled[0]])  # the two other pool files: never hashed whole
