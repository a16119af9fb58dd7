"""TIMIT preparation: SincNet's split on the real sample and on built fixtures."""

import os

import numpy as np
import pytest
import soundfile as sf

from conftest import SHARED_DATA
from sincmi.prepare.manifest import read_manifest
from sincmi.prepare.timit import prepare_timit

TIMIT_SAMPLE = os.path.join(SHARED_DATA, "TIMIT_sample")


def splits(save):
    return {s: read_manifest(os.path.join(save, f"{s}.csv")) for s in ("train", "valid", "test")}


@pytest.mark.skipif(not os.path.isdir(TIMIT_SAMPLE), reason="../shared/data absent")
def test_real_sample_split(tmp_path):
    save = str(tmp_path / "save")
    prepare_timit(TIMIT_SAMPLE, save)
    rows = splits(save)
    assert len(rows["train"]) == 80 and len(rows["test"]) == 48
    assert all(r["ID"].split("_")[1].startswith("SX") for r in rows["train"])
    assert all(r["ID"].split("_")[1].startswith("SI") for r in rows["test"])
    assert all(r["ID"].split("_")[1].startswith("SA") for r in rows["valid"])  # SA: validation only
    assert len({r["spk_id"] for r in rows["train"]}) == 16
    assert {r["spk_id"] for r in rows["test"]} == {r["spk_id"] for r in rows["train"]}
    # Trimmed to the first and last word boundary of the .WRD file.
    for row in rows["train"] + rows["test"]:
        path = row["wav"].replace("$data_root", TIMIT_SAMPLE)
        with open(os.path.splitext(path)[0] + ".WRD") as f:
            words = [line.split() for line in f if line.strip()]
        assert int(row["start"]) == int(words[0][0]) and int(row["stop"]) == int(words[-1][1])
        assert float(row["gain"]) >= 1.0  # peak normalisation amplifies


def write_timit(root, lower=False, riff=False):
    """A 3-speaker TIMIT in the LDC layout: SA1, SI1, SI2, SX1, SX2 each."""
    rng = np.random.default_rng(0)
    name = str.lower if lower else str.upper
    for d, spk in enumerate(["FAKS0", "MDAB0", "MJSW0"]):
        folder = os.path.join(root, name("TRAIN"), name(f"DR{d + 1}"), name(spk))
        os.makedirs(folder)
        for utt in ["SA1", "SI1", "SI2", "SX1", "SX2"]:
            wav = 0.25 * rng.standard_normal(16000)
            base = os.path.join(folder, name(utt))
            if riff:
                sf.write(base + name(".WAV"), wav, 16000, subtype="PCM_16")
            else:
                sf.write(base + name(".WAV"), wav, 16000, format="NIST", subtype="PCM_16")
            with open(base + name(".WRD"), "w") as f:
                f.write("1000 6000 hello\n6000 15000 world\n")


@pytest.mark.parametrize("lower,riff", [(False, False), (True, True), (True, False)])
def test_fixture_layouts(tmp_path, lower, riff):
    root = str(tmp_path / "TIMIT")
    write_timit(root, lower, riff)
    save = str(tmp_path / "save")
    prepare_timit(str(tmp_path), save, valid_split="sx")  # finds TIMIT/TRAIN below the folder
    rows = splits(save)
    assert len(rows["train"]) == 3 and len(rows["valid"]) == 3 and len(rows["test"]) == 6
    assert {int(r["start"]) for r in rows["train"]} == {1000}
    assert {int(r["stop"]) for r in rows["train"]} == {15000}
    first = rows["train"][0]
    path = first["wav"].replace("$data_root", str(tmp_path))
    peak = np.abs(sf.read(path, start=1000, frames=14000)[0]).max()
    assert float(first["gain"]) == pytest.approx(1 / peak, rel=1e-4)


def test_missing_wrd_and_bad_audio_are_skipped(tmp_path):
    root = str(tmp_path / "TIMIT")
    write_timit(root)
    spk = os.path.join(root, "TRAIN", "DR1", "FAKS0")
    os.remove(os.path.join(spk, "SX1.WRD"))
    with open(os.path.join(spk, "SX2.WAV"), "wb") as f:
        f.write(b"")
    save = str(tmp_path / "save")
    prepare_timit(root, save)
    rows = splits(save)
    assert len(rows["train"]) == 4  # 6 SX minus the two broken ones
    skipped = read_manifest(os.path.join(save, "skipped.csv"))
    reasons = {os.path.basename(r["file"]): r["reason"] for r in skipped}
    assert "word boundaries" in reasons["SX1.WAV"]
    assert reasons["SX2.WAV"].startswith("empty file")


def test_not_a_timit_root_is_explained(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(ValueError, match=r"not a TIMIT root: expected TRAIN/DR\*.*something"):
        prepare_timit(str(tmp_path), str(tmp_path / "save"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_timit(str(tmp_path / "nope"), str(tmp_path / "save"))
