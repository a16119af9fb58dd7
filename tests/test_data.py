"""Datasets read the right frames: pairs come from one sentence, labels match."""

import os

import numpy as np
import pytest
import soundfile as sf
import torch

from sincmi import data
from sincmi.prepare.folder import prepare_folder


@pytest.fixture
def manifests(tmp_path):
    # Each file is a ramp with its own offset, so every sample says where it came from.
    root = tmp_path / "corpus"
    for s in range(4):
        os.makedirs(root / f"spk{s}")
        for u in range(4):
            ramp = (np.arange(6000) + 10000 * (4 * s + u)) / 2**20
            sf.write(root / f"spk{s}" / f"u{u}.wav", ramp.astype(np.float32), 16000, subtype="FLOAT")
    save = tmp_path / "save"
    prepare_folder(str(root), str(save), min_samples=800, num_verification_speakers=2,
                   valid_per_speaker=1, test_per_speaker=1)
    return str(root), str(save)


def sentence_of(chunk):
    first = round(float(chunk[0]) * 2**20)
    return first // 10000, first % 10000


def test_pairs_come_from_their_own_sentence(manifests):
    root, save = manifests
    rows = data.load_manifest(os.path.join(save, "train.csv"), root)
    dataset = data.pair_dataset(rows, chunk_size=800)
    torch.manual_seed(0)
    for item in dataset:
        anchor, positive = item["anchor"], item["positive"]
        assert anchor.shape == positive.shape == (800,)
        (file_a, start_a), (file_p, start_p) = sentence_of(anchor), sentence_of(positive)
        assert file_a == file_p  # same sentence
        wav = rows[item["id"]]["wav"]
        assert wav.startswith(root)
        # contiguous reads inside the file
        expected = (np.arange(800) + start_a + 10000 * file_a) / 2**20
        assert np.allclose(anchor.numpy(), expected)
        assert 0 <= start_a <= 6000 - 800 and 0 <= start_p <= 6000 - 800


def test_chunk_and_sentence_datasets_carry_labels(manifests):
    root, save = manifests
    rows = data.load_manifest(os.path.join(save, "train.csv"), root)
    encoder = data.speaker_label_encoder(rows, os.path.join(save, "labels.txt"))
    item = data.chunk_dataset(rows, 800, encoder)[0]
    assert item["chunk"].shape == (800,)
    spk = rows[item["id"]]["spk_id"]
    assert encoder.decode_ndim(item["spk_id_encoded"].item()) == spk
    sentence = data.sentence_dataset(rows, encoder)[0]
    assert sentence["sig"].shape == (6000,)


def test_random_gain_stays_in_range(manifests):
    root, save = manifests
    rows = data.load_manifest(os.path.join(save, "train.csv"), root)
    row = next(iter(rows.values()))
    plain = data.read_segment(row["wav"], 0, 800)
    torch.manual_seed(1)
    for _ in range(20):
        chunk = data.random_chunk(row["wav"], 0, 800, 800, gain_range=(0.8, 1.2))
        ratio = float(chunk[-1] / plain[-1])
        assert 0.8 <= ratio <= 1.2


def test_label_subset_keeps_a_share_of_every_speakers_audio():
    # Speakers with 1 to 3 sentences of uneven length: the labelled share of
    # each speaker's samples is the fraction (within 5 %), whatever the count.
    lengths = {"s0": [48000], "s1": [40000, 56000], "s2": [30000, 50000, 70000]}
    rows = {f"{spk}_{i}": {"spk_id": spk, "start": 100, "stop": 100 + n, "duration": n / 16000}
            for spk, ns in lengths.items() for i, n in enumerate(ns)}
    for fraction in (0.2, 0.5):
        kept = data.label_subset(rows, fraction, seed=0, min_samples=3200)
        for spk, ns in lengths.items():
            share = sum(r["stop"] - r["start"] for r in kept.values() if r["spk_id"] == spk) / sum(ns)
            assert share == pytest.approx(fraction, rel=0.05)
        for key, row in kept.items():
            assert row["start"] == rows[key]["start"] and row["stop"] <= rows[key]["stop"]
            assert row["duration"] == pytest.approx((row["stop"] - row["start"]) / 16000, abs=1e-4)
    assert data.label_subset(rows, 1.0) is rows
    with pytest.raises(ValueError, match=r"label_fraction must be in \(0, 1\]"):
        data.label_subset(rows, 0.0)


def test_label_subset_keeps_at_least_one_chunk_per_speaker():
    rows = {"a": {"spk_id": "x", "start": 0, "stop": 10000}, "b": {"spk_id": "y", "start": 0, "stop": 2000}}
    kept = data.label_subset(rows, 0.1, min_samples=3200)
    assert kept["a"]["stop"] == 3200 and kept["b"]["stop"] == 2000


def test_in_memory_audio_gives_the_same_chunks_as_file_reads(manifests):
    root, save = manifests
    rows = data.load_manifest(os.path.join(save, "train.csv"), root)
    audio = data.preload_audio(rows, progress=False)
    assert set(audio) == {row["wav"] for row in rows.values()}
    from_files = data.pair_dataset(rows, 800, gain_range=(0.8, 1.2))
    from_memory = data.pair_dataset(rows, 800, gain_range=(0.8, 1.2), audio=audio)
    for key in rows:
        torch.manual_seed(7)
        a = from_files[list(rows).index(key)]
        torch.manual_seed(7)
        b = from_memory[list(rows).index(key)]
        assert torch.equal(a["anchor"], b["anchor"]) and torch.equal(a["positive"], b["positive"])


def test_rows_at_another_rate_are_resampled_in_every_dataset(tmp_path):
    """A manifest row with ``rate`` (a file kept with resample_audio) reads at the model's rate."""
    t = np.arange(8000) / 8000
    path = str(tmp_path / "tone_8k.wav")
    sf.write(path, (0.5 * np.sin(2 * np.pi * 500 * t)).astype(np.float32), 8000, subtype="FLOAT")
    rows = {"u8k": {"wav": path, "start": 0, "stop": 8000, "spk_id": "a", "gain": 1.0, "rate": 8000}}
    sig = data.sentence_dataset(rows, sample_rate=16000)[0]["sig"]
    assert abs(sig.shape[0] - 16000) <= 1  # one second at 16 kHz

    def peak_hz(wav):  # a file read without resampling would show its tone at 1000 Hz
        return int(torch.fft.rfft(wav).abs().argmax()) * 16000 / wav.shape[0]

    assert abs(peak_hz(sig) - 500) < 5
    pair = data.pair_dataset(rows, chunk_size=3200, sample_rate=16000)[0]
    assert pair["anchor"].shape == pair["positive"].shape == (3200,)
    assert abs(peak_hz(pair["anchor"]) - 500) < 10
    labels = data.speaker_label_encoder(rows, str(tmp_path / "labels.txt"))
    chunk = data.chunk_dataset(rows, 3200, labels, sample_rate=16000)[0]["chunk"]
    assert chunk.shape == (3200,) and abs(peak_hz(chunk) - 500) < 10


def test_recipe_datasets_honour_rate_gain_and_distance(manifests):
    # Files at 16 kHz read for an 8 kHz model with a gain of 2 and pairs at least
    # 1000 model samples apart: training pairs are resampled, scaled and apart;
    # evaluation sentences are only resampled.
    root, save = manifests
    rows = data.load_manifest(os.path.join(save, "train.csv"), root)
    key = sorted(rows)[0]
    row = {key: rows[key]}
    sets = data.RecipeDatasets({"chunk_size": 400, "sample_rate": 8000, "file_sample_rate": 16000,
                                "random_gain": [2.0, 2.0], "min_pair_distance": 1000})
    assert sets.rates == (16000, 8000) and sets.file_frames == 800
    wav = rows[key]["wav"]
    assert torch.allclose(sets.sentences(row)[0]["sig"], data.resampled(data.read_segment(wav, 0, 6000), (16000, 8000)))
    for seed in range(5):
        torch.manual_seed(seed)
        offsets = data.pair_offsets(6000, 800, 2000)  # the draws the dataset makes first
        assert abs(offsets[0] - offsets[1]) >= 2000
        torch.manual_seed(seed)
        pair = sets.pairs(row)[0]
        for name, offset in zip(("anchor", "positive"), offsets):
            expected = 2 * data.resampled(data.read_segment(wav, offset, 800), (16000, 8000))[:400]
            assert torch.allclose(pair[name], expected)
    torch.manual_seed(0)
    chunk = sets.chunks(row, data.speaker_label_encoder(rows, os.path.join(save, "labels.txt")))[0]["chunk"]
    assert chunk.shape == (400,)


def test_recipes_build_datasets_only_from_their_hparams():
    # Every recipe goes through data.RecipeDatasets, so none can leave out the
    # sample rate, the resampling or the random gain.
    recipes = os.path.join(os.path.dirname(os.path.dirname(__file__)), "recipes")
    for name in sorted(os.listdir(recipes)):
        with open(os.path.join(recipes, name, "train.py")) as f:
            source = f.read()
        for builder in ("pair_dataset(", "chunk_dataset(", "sentence_dataset("):
            assert builder not in source, f"recipes/{name}/train.py builds a dataset by hand ({builder})"


def test_validation_pairs_are_drawn_once_from_the_seed(manifests):
    root, save = manifests
    rows = data.load_manifest(os.path.join(save, "train.csv"), root)
    sets = data.RecipeDatasets({"chunk_size": 800, "sample_rate": 16000, "seed": 7, "valid_pairs_per_sentence": 3})

    def drawn(dataset):
        return [(item["id"], item["sentence"], sentence_of(item["anchor"]), sentence_of(item["positive"]))
                for item in dataset]

    first = drawn(sets.pairs(rows, train=False))
    torch.manual_seed(123)  # the global generator (the training pairs') plays no part
    again = drawn(sets.pairs(rows, train=False))
    assert first == again  # every epoch (and every run with this seed) sees the same pairs
    assert len(first) == 3 * len(rows)
    for item_id, sentence, anchor, positive in first:
        assert item_id.startswith(sentence + "/pair")  # the pairs of a sentence share its key
        assert anchor[0] == positive[0]  # both chunks from that sentence's file
    other_seed = data.RecipeDatasets({"chunk_size": 800, "sample_rate": 16000, "seed": 8,
                                      "valid_pairs_per_sentence": 3}).pairs(rows, train=False)
    assert drawn(other_seed) != first
    # Training pairs are redrawn every time
    train = sets.pairs(rows)
    assert [sentence_of(train[0]["anchor"]) for _ in range(5)] != [sentence_of(train[0]["anchor"])] * 5


def test_a_manifest_table_holds_what_speechbrains_reader_gives(manifests, tmp_path):
    """load_manifest's columns give, row by row, the values of SpeechBrain's dict-per-row reader."""
    from speechbrain.dataio.dataio import load_data_csv

    from sincmi.manifest_table import ManifestTable

    root, save = manifests
    path = os.path.join(save, "train.csv")
    table = data.load_manifest(path, root)
    expected = load_data_csv(path, replacements={"data_root": root})
    assert list(table) == list(expected) and len(table) == len(expected)
    for key, row in expected.items():
        got = table[key]
        assert got["wav"] == row["wav"] and got["spk_id"] == row["spk_id"]
        assert (got["start"], got["stop"]) == (int(row["start"]), int(row["stop"]))
        assert got["gain"] == float(row["gain"]) and got["duration"] == float(row["duration"])
    assert "nope" not in table and sorted(table)[0] in table
    with pytest.raises(KeyError):
        table["nope"]
    both = ManifestTable.concat([table, {"x": {"wav": "/a.wav", "start": 0, "stop": 5, "spk_id": "z",
                                               "sentence": "rec"}}])
    assert list(both) == list(table) + ["x"]
    assert both["x"]["sentence"] == "rec" and "sentence" not in both[list(table)[0]]
    assert both[list(table)[0]] == table[list(table)[0]]
    assert table.seconds(16000) == pytest.approx(sum((int(r["stop"]) - int(r["start"])) / 16000
                                                     for r in expected.values()))
