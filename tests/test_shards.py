"""Shards for large corpora: packing, the pair stream, bad members, mismatched manifests, and a tiny
corpus trained from files and from shards learning alike."""

import csv
import itertools
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch

import conftest
from conftest import ROOT, write_tone_corpus
from sincmi.shards import ShardPairs, pack_shards, read_index, shuffled


def write_manifest(folder, rows_per_file=2, files=6, seconds=1.0, rate=16000):
    """Files of one tone each, cut into ``rows_per_file`` segments sharing a sentence key."""
    os.makedirs(folder, exist_ok=True)
    rows = []
    length = int(seconds * rate)
    for i in range(files):
        wav = np.full(length, (i + 1) / 100, dtype=np.float32)  # file i: constant (i + 1) / 100
        sf.write(os.path.join(folder, f"f{i}.flac"), wav, rate, subtype="PCM_16")
        step = length // rows_per_file
        for k in range(rows_per_file):
            rows.append({"ID": f"f{i}_{k}", "duration": step / rate, "wav": f"$data_root/f{i}.flac",
                         "start": k * step, "stop": (k + 1) * step, "spk_id": f"s{i % 3}", "gain": 2.0,
                         "sentence": f"f{i}"})
    path = os.path.join(folder, "train.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_packed_shards_hold_every_file_and_segment_and_pairs_carry_their_audio(tmp_path):
    manifest = write_manifest(str(tmp_path / "audio"))
    index = pack_shards(manifest, str(tmp_path / "shards"), str(tmp_path / "audio"), files_per_shard=4, jobs=2,
                        progress=False)
    assert (index["files"], index["segments"], len(index["shards"]), index["skipped"]) == (6, 12, 2, 0)
    with tarfile.open(tmp_path / "shards" / index["shards"][0]["name"]) as tar:
        names = tar.getnames()
    assert sum(n.endswith(".audio.flac") for n in names) == 4 and sum(n.endswith(".json") for n in names) == 4
    stream = ShardPairs(str(tmp_path / "shards"), 800, seed=1, pairs_per_segment=3, shuffle_buffer=5,
                        manifests=[manifest])
    assert len(stream) == 36
    pairs = list(itertools.islice(iter(stream), 36))
    for pair in pairs:  # each chunk is its own file's constant, times the manifest's gain
        file = int(pair["sentence"][1:])
        expected = 2.0 * round((file + 1) / 100 * 32767) / 32768
        assert pair["anchor"].shape == (800,) and torch.allclose(pair["anchor"], torch.full((800,), expected))
        assert torch.allclose(pair["positive"], pair["anchor"])
        assert pair["id"].startswith(pair["sentence"] + "_")
    # One pass reads every segment pairs_per_segment times (seen in order without a shuffle buffer).
    one_pass = ShardPairs(str(tmp_path / "shards"), 800, seed=1, pairs_per_segment=3, shuffle_buffer=1)
    counts = {}
    for pair in itertools.islice(iter(one_pass), 36):
        counts[pair["id"]] = counts.get(pair["id"], 0) + 1
    assert counts == {f"f{i}_{k}": 3 for i in range(6) for k in range(2)}


def test_the_stream_is_reproducible_and_keyed_by_rank_worker_and_epoch(tmp_path, monkeypatch):
    manifest = write_manifest(str(tmp_path / "audio"), files=8)
    pack_shards(manifest, str(tmp_path / "shards"), str(tmp_path / "audio"), files_per_shard=2, progress=False)

    def offsets(rank, world, epoch=0):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        counter = type("Counter", (), {"current": epoch})()
        stream = ShardPairs(str(tmp_path / "shards"), 400, seed=7, pairs_per_segment=2, shuffle_buffer=4,
                            epoch_counter=counter)
        return [(p["id"], float(p["anchor"].sum())) for p in itertools.islice(iter(stream), 8)]

    assert offsets(0, 1) == offsets(0, 1)
    assert offsets(0, 1) != offsets(0, 1, epoch=1)
    rank0, rank1 = offsets(0, 2), offsets(1, 2)
    # Two ranks read disjoint shards (different files) in the same pass.
    assert not {i.split("_")[0] for i, _ in rank0} & {i.split("_")[0] for i, _ in rank1}


def test_a_corrupt_member_is_reported_and_skipped(tmp_path, caplog):
    manifest = write_manifest(str(tmp_path / "audio"), files=3)
    with open(tmp_path / "audio" / "f1.flac", "r+b") as f:  # a file that is not audio any more
        f.write(b"not a flac file at all" * 10)
    pack_shards(manifest, str(tmp_path / "shards"), str(tmp_path / "audio"), files_per_shard=10, progress=False)
    stream = ShardPairs(str(tmp_path / "shards"), 800, pairs_per_segment=1, shuffle_buffer=1)
    with caplog.at_level("WARNING"):
        pairs = list(itertools.islice(iter(stream), 4))
    assert {p["sentence"] for p in pairs} == {"f0", "f2"}
    assert stream.bad_members >= 1
    assert any("skipped: cannot decode" in r.getMessage() for r in caplog.records)


def test_shards_with_nothing_usable_fail_instead_of_looping(tmp_path):
    manifest = write_manifest(str(tmp_path / "audio"), files=2)
    with pytest.raises(ValueError, match="none of the 2 files .* could be read .* is --data_root right"):
        pack_shards(manifest, str(tmp_path / "shards"), str(tmp_path / "elsewhere"), progress=False)
    for i in range(2):  # every recording corrupt after packing
        with open(tmp_path / "audio" / f"f{i}.flac", "r+b") as f:
            f.write(b"x" * 64)
    pack_shards(manifest, str(tmp_path / "shards"), str(tmp_path / "audio"), progress=False)
    with pytest.raises(ValueError, match="no usable recording"):
        next(iter(ShardPairs(str(tmp_path / "shards"), 800, shuffle_buffer=1)))


def test_missing_files_are_listed_when_packing(tmp_path):
    manifest = write_manifest(str(tmp_path / "audio"), files=3)
    os.remove(tmp_path / "audio" / "f2.flac")
    index = pack_shards(manifest, str(tmp_path / "shards"), str(tmp_path / "audio"), progress=False)
    assert index["files"] == 2 and index["skipped"] == 1
    with open(tmp_path / "shards" / "shards_skipped.csv") as f:
        rows = list(csv.reader(f))
    assert rows[1][0].endswith("f2.flac") and "unreadable" in rows[1][1]


def test_shards_of_another_manifest_are_refused_naming_both(tmp_path):
    manifest = write_manifest(str(tmp_path / "audio"), files=3)
    pack_shards(manifest, str(tmp_path / "shards"), str(tmp_path / "audio"), progress=False)
    other = write_manifest(str(tmp_path / "other"), files=4)
    with pytest.raises(ValueError, match=r"packed from .*train\.csv.*differ from this run's .*other.*train\.csv"):
        read_index(str(tmp_path / "shards"), [other])
    with pytest.raises(FileNotFoundError, match="holds no shards.json"):
        read_index(str(tmp_path / "audio"))


def test_shuffle_buffer_keeps_every_item():
    rng = np.random.default_rng(3)
    out = list(shuffled(range(100), 10, rng))
    assert sorted(out) == list(range(100)) and out != list(range(100))


SMALL_RUN = [*conftest.SMALL_RUN, "--finetune_epochs=1", "--finetune_chunks_per_epoch=64", "--score_baselines=False",
             "--num_workers=0"]


def test_the_same_corpus_trained_from_files_and_from_shards_learns_alike(tmp_path):
    """A prepare-only run, shards packed from its train.csv, then LIM from the files and from the
    shards (2 pairs per segment read): both must learn (validation loss well below its start, EER well
    under chance) and end close to each other."""
    demo = [sys.executable, os.path.join(ROOT, "recipes", "Demo", "train.py"),
            os.path.join(ROOT, "recipes", "Demo", "hparams", "lim_nce.yaml"), f"--synth_folder={tmp_path / 'corpus'}"]
    files_out, shards_out = tmp_path / "files", tmp_path / "shards_run"
    prep = subprocess.run(demo + [f"--output_folder={shards_out}", "--prepare_only=True", *SMALL_RUN],
                          capture_output=True, text=True, timeout=600)
    assert prep.returncode == 0, prep.stderr[-3000:]
    assert not os.path.exists(shards_out / "save" / "pretrain")  # stopped after preparation
    save = shards_out / "save"  # the Demo's LIM pretrains on all of the training speakers' files
    pack = subprocess.run([sys.executable, "-m", "sincmi", "shards", *(str(save / f"{s}.csv") for s in
                                                                         ("train", "valid", "test")),
                           str(tmp_path / "shards"), "--data_root", str(tmp_path / "corpus"),
                           "--files_per_shard=8"], capture_output=True, text=True, timeout=300)
    assert pack.returncode == 0, pack.stderr[-3000:]
    results = {}
    for out, extra in ((files_out, []), (shards_out, [f"--train_shards={tmp_path / 'shards'}",
                                                        "--pairs_per_segment=2", "--shuffle_buffer=256"])):
        proc = subprocess.run(demo + [f"--output_folder={out}", *SMALL_RUN, *extra], capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        with open(out / "results.json") as f:
            results[out.name] = json.load(f)["systems"]["LIM (nce)"]
        log = (out / "train_log.txt").read_text().splitlines()
        losses = [float(line.split("valid loss: ")[1].split(",")[0]) for line in log if "stage: pretrain" in line]
        assert len(losses) == 6 and min(losses[-2:]) < 0.85 * losses[0], (out.name, losses)
    assert "LIM reads" in (shards_out / "log.txt").read_text()
    files_eer, shards_eer = results["files"]["EER"], results["shards_run"]["EER"]
    assert files_eer < 0.2 and shards_eer < 0.2, (files_eer, shards_eer)
    assert abs(files_eer - shards_eer) < 0.1, (files_eer, shards_eer)


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
def test_two_ranks_train_lim_from_shards(tmp_path):
    """torchrun with 2 processes and 2 loader workers each: the shard stream, SpeechBrain's LoopedLoader and
    DDP together; each rank reads its own shards, and the run ends with its results."""
    from conftest import TINY_MODEL

    corpus = write_tone_corpus(str(tmp_path / "corpus"), speakers=6, utterances=4, seconds=0.6)
    demo = [os.path.join(ROOT, "recipes", "Demo", "train.py"), os.path.join(ROOT, "recipes", "Demo", "hparams",
                                                                             "lim_nce.yaml"),
            f"--output_folder={tmp_path / 'out'}", f"--data_folder={corpus}",
            *[a for a in TINY_MODEL if not a.startswith("--num_workers")],
            "--num_verification_speakers=2", "--valid_per_speaker=1", "--test_per_speaker=1",
            "--score_baselines=False", "--pretrain_epochs=2", "--pairs_per_epoch=32", "--pretrain_batch_size=4"]
    prep = subprocess.run([sys.executable, *demo, "--prepare_only=True", "--num_workers=0"], capture_output=True,
                          text=True, timeout=300)
    assert prep.returncode == 0, prep.stderr[-3000:]
    save = tmp_path / "out" / "save"
    index = pack_shards([str(save / f"{s}.csv") for s in ("train", "valid", "test")], str(tmp_path / "shards"),
                        corpus, files_per_shard=2, progress=False)
    assert len(index["shards"]) >= 4  # 2 ranks x 2 workers
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *demo,
           "--distributed_backend=gloo", f"--train_shards={tmp_path / 'shards'}", "--num_workers=2",
           "--pairs_per_segment=2", "--shuffle_buffer=8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, conftest.failure_report(proc)
    log = (tmp_path / "out" / "train_log.txt").read_text()
    assert log.count("stage: pretrain, epoch:") == 2
    assert "LIM reads" in (tmp_path / "out" / "log.txt").read_text()
    assert "Cannot automatically solve distributed sampling" not in proc.stdout + proc.stderr
    with open(tmp_path / "out" / "results.json") as f:
        assert "LIM (nce)" in json.load(f)["systems"]


def test_the_shards_command_says_what_is_wrong_in_one_line(tmp_path):
    manifest = write_manifest(str(tmp_path / "audio"), files=2)
    for args, message in (([manifest, str(tmp_path / "out"), "--data_root", str(tmp_path / "wrong")], "--data_root"),
                          ([str(tmp_path / "nope.csv"), str(tmp_path / "out")], "not found")):
        proc = subprocess.run([sys.executable, "-m", "sincmi", "shards", *args], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 1 and message in proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
