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


def test_splits_and_trials(tmp_path):
    from conftest import write_tone_corpus

    tone_corpus = write_tone_corpus(str(tmp_path / "corpus"), utterances=4)
    save = str(tmp_path / "save")
    prepare(tone_corpus, save)
    train, valid, test = (read_manifest(os.path.join(save, f"{s}.csv")) for s in ("train", "valid", "test"))
    verification = read_manifest(os.path.join(save, "verification.csv"))
    train_spk = {r["spk_id"] for r in train}
    ver_spk = {r["spk_id"] for r in verification}
    assert len(train_spk) == 2 and len(ver_spk) == 2 and not train_spk & ver_spk
    assert len(train) == 4 and len(valid) == 2 and len(test) == 2  # 4 utts/speaker: 2/1/1
    all_ids = [r["ID"] for r in train + valid + test + verification]
    assert len(all_ids) == len(set(all_ids)) == 16
    assert train[0]["wav"].startswith("$data_root/")
    assert int(train[0]["stop"]) == 8000 and float(train[0]["duration"]) == 0.5
    with open(os.path.join(save, "trials.txt")) as f:
        trials = [line.split() for line in f]
    assert len(trials) == 8 * 7 // 2  # every pair of the 8 verification utterances
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


def write_uneven_folder(folder, files_per_speaker):
    """Speakers with the given numbers of files, in sub-folders, with stray non-audio files."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    for s, count in enumerate(files_per_speaker):
        for u in range(count):
            path = os.path.join(folder, f"spk{s}", f"chapter{u % 2}", "deeper" * (u % 3 == 2), f"u{u}.flac")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            sf.write(path, 0.1 * rng.standard_normal(8000), 16000)
        with open(os.path.join(folder, f"spk{s}", "notes.txt"), "w") as f:
            f.write("not audio")
    with open(os.path.join(folder, "README.md"), "w") as f:  # a file beside the speaker folders
        f.write("stray")
    os.makedirs(os.path.join(folder, "empty_speaker", "sub"), exist_ok=True)  # no audio: not a speaker
    return folder


@pytest.mark.parametrize("files", [1, 2, 3, 4, 5, 6])
def test_every_training_speaker_keeps_training_audio(files, tmp_path):
    # Speakers with 1..6 files (and 6 with plenty): at most half of a speaker's
    # files are held out, test first, and the rest is always training audio.
    folder = write_uneven_folder(str(tmp_path / "mine"), [files] * 4 + [6] * 4)
    save = str(tmp_path / "save")
    prepare(folder, save, num_verification_speakers=2, valid_per_speaker=2, test_per_speaker=4)
    splits = {s: read_manifest(os.path.join(save, f"{s}.csv")) for s in ("train", "valid", "test")}
    verification = {r["spk_id"] for r in read_manifest(os.path.join(save, "verification.csv"))}
    training_speakers = {f"spk{s}" for s in range(8)} - verification
    assert len(training_speakers) == 6 and "empty_speaker" not in training_speakers | verification
    for spk in training_speakers:
        count = {s: sum(r["spk_id"] == spk for r in rows) for s, rows in splits.items()}
        total = sum(count.values())
        assert count["train"] >= 1 and count["valid"] + count["test"] <= total // 2
        assert count["test"] >= count["valid"]
    assert all(r["wav"].endswith(".flac") for rows in splits.values() for r in rows)


def test_fewer_held_out_files_are_logged(tmp_path, caplog):
    folder = write_uneven_folder(str(tmp_path / "mine"), [4] * 6)
    with caplog.at_level("WARNING"):
        prepare(folder, str(tmp_path / "save"), num_verification_speakers=2, valid_per_speaker=2,
                test_per_speaker=4)
    assert "too few files" in caplog.text and "1 test, 1 valid" in caplog.text


def test_empty_split_is_an_error_naming_the_option(tmp_path):
    # Two files per speaker: one may be held out, for test; nothing is left for validation.
    folder = write_uneven_folder(str(tmp_path / "mine"), [2] * 5)
    with pytest.raises(ValueError, match="valid split is empty: valid_per_speaker=1"):
        prepare(folder, str(tmp_path / "save"), num_verification_speakers=2)
    with pytest.raises(ValueError, match="test split is empty: test_per_speaker=0"):
        prepare(folder, str(tmp_path / "save"), num_verification_speakers=2, test_per_speaker=0)


def test_one_speaker_is_explained(tmp_path):
    folder = write_uneven_folder(str(tmp_path / "mine"), [6])
    with pytest.raises(ValueError, match="1 speaker.*num_verification_speakers"):
        prepare(folder, str(tmp_path / "save"))


def test_other_data_in_a_trained_output_folder_is_refused(tone_corpus, tmp_path):
    # A run on the synthetic corpus, then the same output folder pointed at a
    # user's folder: resuming its checkpoints would be wrong, so it is refused.
    from conftest import write_tone_corpus

    save = str(tmp_path / "save")
    prepare(tone_corpus, save)
    os.makedirs(os.path.join(save, "pretrain", "CKPT+2026-01-01+00-00-00+00"))
    other = write_tone_corpus(str(tmp_path / "other"), utterances=4)
    with pytest.raises(ValueError, match="holds a run prepared with other settings.*data_folder.*--output_folder"):
        prepare(other, save)
    prepare(tone_corpus, save)  # the same data still resumes
