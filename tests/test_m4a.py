"""VoxCeleb2's AAC (``.m4a``) is read where WAV and FLAC are: the audio module, the per-file reader,
the folder preparer (the Demo's own-folder recipe), the unlabelled pool and the VoxCeleb preparer.
The test writes its small AAC files itself (PyAV's FFmpeg encoder)."""

import os

import numpy as np
import pytest
import soundfile as sf

from sincmi.audio import audio_info, decode_bytes, read_audio, write_aac
from sincmi.data import read_segment
from sincmi.prepare.folder import prepare_folder
from sincmi.prepare.manifest import inspect_audio, read_manifest
from sincmi.prepare.unlabelled import audio_files, scan_audio
from sincmi.prepare.voxceleb import list_wavs, prepare_voxceleb

RATE = 16000


def tone(frequency, seconds=1.0):
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def dominant_frequency(wav):
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return np.argmax(spectrum) * RATE / len(wav)


def test_aac_is_decoded_to_the_waveform_it_encodes(tmp_path):
    path = write_aac(tmp_path / "a.m4a", tone(440), RATE)
    info = audio_info(str(path))
    assert (info.samplerate, info.channels) == (RATE, 1)
    assert abs(info.frames - RATE) < 2048  # the container's length, within AAC's frame padding
    data = read_audio(str(path))
    assert data.shape[1] == 1 and abs(len(data) - RATE) < 2048
    assert abs(dominant_frequency(data[:, 0]) - 440) < 5
    assert abs(np.abs(data).max() - 0.3) < 0.05
    assert np.array_equal(read_audio(str(path), 1000, 500), data[1000:1500])
    decoded, rate = decode_bytes(path.read_bytes(), ".m4a")
    assert rate == RATE and np.array_equal(decoded, data)
    chunk = read_segment(str(path), 4000, 3200)  # the per-file reader of every dataset
    assert chunk.shape == (3200,) and abs(dominant_frequency(chunk.numpy()) - 440) < 10


def test_a_corrupt_m4a_is_refused_with_a_reason(tmp_path):
    bad = tmp_path / "bad.m4a"
    bad.write_bytes(b"\x00\x00\x00\x18ftypM4A " + b"garbage" * 100)
    check = inspect_audio(str(bad), RATE, 3200)
    assert check.reason and "not readable as audio" in check.reason


def test_a_folder_of_m4a_speakers_is_prepared(tmp_path):
    """The Demo's own-folder recipe (prepare_folder) on speakers whose recordings are .m4a."""
    root = tmp_path / "speakers"
    for s in range(4):
        os.makedirs(root / f"spk{s}")
        for u in range(4):
            write_aac(root / f"spk{s}" / f"u{u}.m4a", tone(150 + 50 * s + 5 * u), RATE)
    save = tmp_path / "save"
    prepare_folder(str(root), str(save), num_verification_speakers=2, valid_per_speaker=1, test_per_speaker=1,
                   sample_rate=RATE, min_samples=3200)
    rows = [r for split in ("train", "valid", "test", "verification") for r in read_manifest(save / f"{split}.csv")]
    assert len(rows) == 16 and all(r["wav"].endswith(".m4a") for r in rows)
    row = rows[0]
    path = row["wav"].replace("$data_root", str(root))
    assert read_segment(path, int(row["start"]), int(row["stop"]) - int(row["start"])).shape[0] > 15000


def test_the_unlabelled_pool_reads_m4a(tmp_path):
    os.makedirs(tmp_path / "pool")
    write_aac(tmp_path / "pool" / "x.m4a", tone(300, 2.0), RATE)
    files = audio_files(str(tmp_path / "pool"))
    assert [os.path.basename(f) for f in files] == ["x.m4a"]
    frames, rate, reason = scan_audio(files[0], RATE, 3200, False)
    assert reason is None and rate == RATE and abs(frames - 2 * RATE) < 2048


def test_voxceleb2_as_distributed_is_prepared(tmp_path):
    """VoxCeleb2 dev's own layout and format: <spk>/<video>/<utt>.m4a beside VoxCeleb1's wav/."""
    vox1 = tmp_path / "VoxCeleb1"
    for s in range(2):
        for u in range(2):
            os.makedirs(vox1 / "wav" / f"id1000{s}" / "vid", exist_ok=True)
            sf.write(vox1 / "wav" / f"id1000{s}" / "vid" / f"0000{u}.wav", tone(200 + 40 * s + 7 * u), RATE)
    (vox1 / "veri_test2.txt").write_text("1 id10000/vid/00000.wav id10000/vid/00001.wav\n"
                                          "0 id10000/vid/00000.wav id10001/vid/00000.wav\n")
    vox2 = tmp_path / "VoxCeleb2" / "aac"
    for s in range(3):
        for v in range(2):
            os.makedirs(vox2 / f"id0500{s}" / f"video{v}")
            write_aac(vox2 / f"id0500{s}" / f"video{v}" / "00001.m4a", tone(120 + 60 * s + 9 * v, 2.0), RATE)
    assert len(list_wavs(str(vox2))) == 6
    save = tmp_path / "save"
    prepare_voxceleb(str(vox1), str(save), voxceleb2_folder=str(vox2), train_sets=["voxceleb2"],
                     segment_seconds=1.0, valid_speakers=1, prepare_jobs=2)
    train = read_manifest(save / "train.csv") + read_manifest(save / "valid.csv")
    assert {r["spk_id"] for r in train} == {"id05000", "id05001", "id05002"}
    assert all(r["wav"].startswith("$voxceleb2/") and r["wav"].endswith(".m4a") for r in train)
    assert len({r["sentence"] for r in train}) == 6


@pytest.mark.parametrize("jobs", [1, 2])
def test_parallel_inspection_gives_the_serial_answers(tmp_path, jobs):
    from sincmi.prepare.manifest import inspect_many

    paths = []
    for i in range(70):  # enough to use the process pool
        path = tmp_path / f"f{i}.wav"
        sf.write(path, tone(100 + i, 0.1 + 0.01 * i), RATE)
        paths.append(str(path))
    (tmp_path / "empty.wav").write_bytes(b"")
    paths.append(str(tmp_path / "empty.wav"))
    checks = inspect_many(paths, RATE, 3200, jobs=jobs)
    assert checks == [inspect_audio(p, RATE, 3200) for p in paths]
    assert checks[-1].reason == "empty file (0 bytes)" and checks[0].reason.startswith("too short")
