"""The routes to stronger LIM embeddings: pseudo-labels and pair augmentation with the field's augmentations."""

import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import run_recipe, write_tone_corpus
from sincmi.augment import GeneratedReverb, SameLength, write_room_impulse_responses
from sincmi.pseudo_labels import cluster_embeddings, purity, relabelled


def test_clusters_of_separated_speakers_are_the_speakers_and_purity_counts_by_hand():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16)) * 5
    embeddings = {f"s{k}_u{j}": torch.from_numpy(centres[k] + rng.normal(size=16) * 0.3) for k in range(5)
                  for j in range(4)}
    clusters = cluster_embeddings(embeddings, 5)
    speakers = {key: key.split("_")[0] for key in embeddings}
    assert purity(clusters, speakers) == 1.0
    assert len(set(clusters.values())) == 5
    # By hand: 2 clusters of 5 speakers, the best-matching speaker of each cluster counts
    merged = {key: min(int(speakers[key][1:]), 1) for key in embeddings}  # s0 | s1..s4
    assert purity(merged, speakers) == pytest.approx((4 + 4) / 20)
    rows = {key: {"spk_id": speakers[key], "wav": "x"} for key in embeddings}
    named = relabelled(rows, clusters)
    assert named["s0_u0"]["spk_id"] == f"cluster{clusters['s0_u0']}" and named["s0_u0"]["wav"] == "x"
    with pytest.raises(ValueError, match="between 1 and the 20 training utterances"):
        cluster_embeddings(embeddings, 21)


def test_generated_room_impulse_responses_decay_and_reverberate_a_chunk(tmp_path):
    path = write_room_impulse_responses(str(tmp_path / "rirs"), count=4, rt60_low=0.3, rt60_high=0.3, seed=1)
    header, *rows = open(path).read().splitlines()
    assert header == "ID,duration,wav,wav_format,wav_opts" and len(rows) == 4
    rir, rate = sf.read(str(tmp_path / "rirs" / "rir_0.wav"))
    assert rate == 16000 and len(rir) == 1 + int(0.3 * 16000) and abs(rir[0]) == pytest.approx(1.0, abs=1e-4)
    early, late = np.sum(rir[1:800] ** 2), np.sum(rir[-800:] ** 2)
    assert late < early * 1e-3  # 50 ms at the end of a 300 ms decay: far below the start
    assert write_room_impulse_responses(str(tmp_path / "rirs"), count=4) == path  # written once
    torch.manual_seed(0)
    chunk = torch.randn(3, 3200)
    out = GeneratedReverb(str(tmp_path / "rirs"))(chunk)
    assert out.shape == chunk.shape and not torch.allclose(out, chunk)


def test_speed_perturbation_keeps_the_chunk_length():
    from speechbrain.augment.time_domain import SpeedPerturb

    x = torch.randn(2, 3200)
    for speed in (90, 110):
        out = SameLength(SpeedPerturb(16000, speeds=[speed]))(x)
        assert out.shape == x.shape
    slow = SpeedPerturb(16000, speeds=[90])(x)
    assert torch.equal(SameLength(SpeedPerturb(16000, speeds=[90]))(x), slow[:, :3200])


def test_demo_runs_pseudo_label_rounds_and_augmented_pairs(tmp_path):
    folder = write_tone_corpus(str(tmp_path / "mine"), speakers=8, utterances=4, seconds=0.6)
    args = ["--data_folder=" + folder, "--num_verification_speakers=3", "--valid_per_speaker=1",
            "--test_per_speaker=1", "--score_baselines=False", "--pseudo_label_rounds=2",
            "--pseudo_label_clusters=5", "--pseudo_label_epochs=1", "--augment_pairs=True"]
    results, _ = run_recipe("Demo", "lim_nce.yaml", tmp_path / "out", *args)
    row = results["systems"]["LIM (nce)"]
    assert len(row["pseudo_label_purity"]) == 2 and all(0.2 <= p <= 1.0 for p in row["pseudo_label_purity"])
    save = tmp_path / "out" / "save"
    for stage in ("pseudo_labels_1", "pseudo_labels_2"):
        assert any(name.startswith("CKPT+") for name in os.listdir(save / stage))
    assert (save / "generated_rirs" / "rirs.csv").is_file()
    with open(tmp_path / "out" / "results.json") as f:
        assert "pseudo_labels" in json.load(f)["timings_s"]
