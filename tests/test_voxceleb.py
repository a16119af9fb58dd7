"""VoxCeleb preparation and recipe on a fixture in the VoxCeleb layout."""

import glob
import gzip
import json
import os
import subprocess
import sys

import pytest
import soundfile as sf
import torch

from conftest import SHARED_DATA, run_recipe
from sincmi.data import load_manifest, pair_dataset
from sincmi.inference import SpeakerEncoder
from sincmi.scoring import read_scores
from sincmi.prepare.manifest import read_manifest
from sincmi.prepare.synth import synthesize_corpus
from sincmi.prepare.voxceleb import prepare_voxceleb

TRIAL_SPEAKERS = 3


LIBRI_SAMPLE = os.path.join(SHARED_DATA, "LibriSpeech_sample", "LibriSpeech", "test-other")


@pytest.fixture(scope="module")
def voxceleb(tmp_path_factory):
    """VoxCeleb1 layout: 8 synthetic voices (and, with ../shared, 3 LibriSpeech readers as
    training speakers), 2 videos x 2 utterances each."""
    tmp = tmp_path_factory.mktemp("vox")
    corpus = synthesize_corpus(str(tmp / "synth"), num_speakers=8, sentences_per_speaker=4, seed=3)
    sources = {f"id1{s:04d}": [os.path.join(corpus, f"spk{s:03d}", f"spk{s:03d}_u{u:03d}.wav") for u in range(4)]
               for s in range(8)}
    if os.path.isdir(LIBRI_SAMPLE):
        for reader in sorted(os.listdir(LIBRI_SAMPLE))[:3]:
            flacs = sorted(glob.glob(os.path.join(LIBRI_SAMPLE, reader, "*", "*.flac")))[:4]
            sources[f"id2{int(reader):04d}"] = flacs
    root = tmp / "VoxCeleb1"
    utts = {}
    for spk, files in sources.items():
        for u, source in enumerate(files):
            rel = f"{spk}/video{u // 2}/{u:05d}.wav"
            os.makedirs(root / "wav" / os.path.dirname(rel), exist_ok=True)
            wav, rate = sf.read(source, dtype="int16")
            sf.write(root / "wav" / rel, wav, rate, subtype="PCM_16")
            utts.setdefault(spk, []).append(rel)
    test_utts = [u for spk in sorted(utts)[:TRIAL_SPEAKERS] for u in utts[spk]]
    lines = [f"{int(a.split('/')[0] == b.split('/')[0])} {a} {b}\n"
             for i, a in enumerate(test_utts) for b in test_utts[i + 1:]]
    (root / "veri_test2.txt").write_text("".join(lines))
    return root


def test_preparation(voxceleb, tmp_path):
    save = str(tmp_path / "save")
    prepare_voxceleb(str(voxceleb), save, segment_seconds=1.0, valid_speakers=2)
    train, valid = read_manifest(os.path.join(save, "train.csv")), read_manifest(os.path.join(save, "valid.csv"))
    verification = read_manifest(os.path.join(save, "verification.csv"))
    trial_speakers = {r["spk_id"] for r in verification}
    assert len(trial_speakers) == TRIAL_SPEAKERS
    assert not trial_speakers & {r["spk_id"] for r in train + valid}  # trial speakers never train
    training_speakers = 8 - TRIAL_SPEAKERS + (3 if os.path.isdir(LIBRI_SAMPLE) else 0)
    assert len({r["spk_id"] for r in train}) == training_speakers
    assert {r["sentence"] for r in valid}.isdisjoint({r["sentence"] for r in train})
    for row in train:
        assert int(row["stop"]) - int(row["start"]) <= 16000  # 1 s segments
        assert row["ID"].rsplit("_", 1)[0] == row["sentence"]
    with open(os.path.join(save, "trials.txt")) as f:
        trials = [line.split() for line in f]
    assert len(trials) == 12 * 11 // 2 and {t[1] for t in trials} <= {r["ID"] for r in verification}
    # Pairs of one utterance's segments share its sentence key.
    rows = load_manifest(os.path.join(save, "train.csv"), {"voxceleb1": str(voxceleb), "voxceleb2": ""})
    item = pair_dataset(rows, 3200)[0]
    assert item["sentence"] == rows[item["id"]]["sentence"] != item["id"]


def test_missing_data_is_explained(voxceleb, tmp_path):
    with pytest.raises(FileNotFoundError, match="VoxCeleb1 not found.*wav"):
        prepare_voxceleb(str(tmp_path), str(tmp_path / "s"))
    with pytest.raises(FileNotFoundError, match="trial list 'nope.txt' not found"):
        prepare_voxceleb(str(voxceleb), str(tmp_path / "s"), trial_list="nope.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("1 a.wav b.wav\n1 a.wav\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        prepare_voxceleb(str(voxceleb), str(tmp_path / "s"), trial_list=str(bad))


def test_recipe_lim_then_finetune(voxceleb, tmp_path):
    common = [f"--voxceleb1_folder={voxceleb}", "--segment_seconds=1.0", "--valid_speakers=2",
              "--critic_hidden_size=16", "--cohort_size=20", "--cohort_top_k=5", "--score_norm=as-norm"]
    lim_out = tmp_path / "lim"
    results, _ = run_recipe("VoxCeleb", "lim_nce.yaml", lim_out, *common)
    (metrics,) = results["systems"].values()
    assert metrics["target_trials"] == 18 and metrics["nontarget_trials"] == 48
    assert 0 <= metrics["EER"] <= 1 and "minDCF_0.05" in metrics
    assert os.path.getsize(lim_out / "det_lim_nce.png") > 1000
    targets, nontargets = read_scores(lim_out / "scores_lim_nce.txt.gz")
    assert (len(targets), len(nontargets)) == (18, 48)
    check_exported_score_normalisation(lim_out, voxceleb, tmp_path, metrics["EER"])
    ft_out = tmp_path / "ft"
    run_recipe("VoxCeleb", "finetune.yaml", ft_out, f"--voxceleb1_folder={voxceleb}", "--segment_seconds=1.0",
               "--valid_speakers=2", "--cohort_size=20", f"--pretrained_folder={lim_out}", pretrain=False)
    assert "Loaded the LIM encoder" in open(ft_out / "log.txt").read()
    with open(ft_out / "results.json") as f:
        (fine_tuned,) = json.load(f)["systems"].values()
    assert (fine_tuned["target_trials"], fine_tuned["nontarget_trials"]) == (18, 48)  # the same trials
    assert 0 <= fine_tuned["EER"] <= 1
    assert sum(line.startswith("stage: finetune, epoch:") for line in open(ft_out / "train_log.txt")) == 1
    # Fine-tuning trained the LIM encoder further: its weights moved from the loaded ones.
    lim_weights = load_encoder_weights(lim_out / "save" / "pretrain")
    tuned_weights = load_encoder_weights(ft_out / "save" / "finetune")
    assert lim_weights.keys() == tuned_weights.keys()
    assert any(not torch.equal(lim_weights[k], tuned_weights[k]) for k in lim_weights)


def load_encoder_weights(stage_folder):
    (checkpoint,) = [n for n in os.listdir(stage_folder) if n.startswith("CKPT+")]
    return torch.load(os.path.join(stage_folder, checkpoint, "encoder.ckpt"), map_location="cpu")


def check_exported_score_normalisation(run, voxceleb, tmp_path, run_eer):
    """The run exported with its as-norm cohort verifies pairs with the scores of its trials."""
    model = tmp_path / "model"
    proc = subprocess.run([sys.executable, "-m", "sincmi", "export", str(run), str(model), "--no_traced"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["score_norm"] == "as-norm" and os.path.isfile(model / "cohort.ckpt")
    assert summary["eer"] == pytest.approx(run_eer)  # the threshold is chosen on the normalised scores
    encoder = SpeakerEncoder.from_hparams(source=str(model))
    rows = load_manifest(os.path.join(run, "save", "verification.csv"), {"voxceleb1": str(voxceleb), "voxceleb2": ""})
    with gzip.open(run / "scores_lim_nce.txt.gz", "rt") as f:
        scored = [line.split() for line in f][:10]
    for enrol, test, score, _ in scored:
        assert all(rows[u]["start"] == 0 for u in (enrol, test))  # whole files: the model embeds files
        ours = encoder.verify_files(rows[enrol]["wav"], rows[test]["wav"]).score
        assert ours == pytest.approx(float(score), abs=2e-4), (enrol, test)
    # Without the normalisation the model scores by raw cosine, so the run's (normalised) trials give no threshold
    raw = subprocess.run([sys.executable, "-m", "sincmi", "export", str(run), str(tmp_path / "raw"), "--no_traced",
                          "--no_score_norm"], capture_output=True, text=True, timeout=300)
    assert raw.returncode == 0, raw.stderr[-2000:]
    assert json.loads(raw.stdout.split("\n", 1)[1])["threshold"] is None
    assert not os.path.isfile(tmp_path / "raw" / "cohort.ckpt")


def test_finetune_without_a_lim_run_is_explained(voxceleb, tmp_path):
    _, proc = run_recipe("VoxCeleb", "finetune.yaml", tmp_path / "ft", f"--voxceleb1_folder={voxceleb}",
                         f"--pretrained_folder={tmp_path / 'nothing'}", pretrain=False, expect_ok=False)
    assert proc.returncode != 0 and "holds no LIM" in proc.stdout + proc.stderr


def test_load_pretrained_encoder_needs_a_checkpoint(tmp_path):
    from sincmi.encoder import SincNetEncoder
    from sincmi.stages import load_pretrained_encoder

    (tmp_path / "save" / "pretrain").mkdir(parents=True)
    encoder = SincNetEncoder(chunk_size=800, sinc_filters=4, sinc_kernel=33, conv_channels=[4],
                             conv_kernels=[5], fc_sizes=[8])
    with pytest.raises(FileNotFoundError, match="holds no LIM checkpoint"):
        load_pretrained_encoder(encoder, str(tmp_path))


def test_the_recipe_takes_an_unlabelled_pool(voxceleb, tmp_path):
    from test_unlabelled import write_calls

    pool = write_calls(str(tmp_path / "pool"))
    run_recipe("VoxCeleb", "lim_nce.yaml", tmp_path / "run", f"--voxceleb1_folder={voxceleb}",
               f"--unlabelled_folder={pool}", "--segment_seconds=1.0", "--valid_speakers=2",
               "--critic_hidden_size=16", "--cohort_size=20")
    assert "(2 of the segments from the unlabelled pool)" in open(tmp_path / "run" / "log.txt").read()
