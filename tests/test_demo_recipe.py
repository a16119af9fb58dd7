"""Smoke runs of the Demo recipe on tiny configurations."""

import numpy as np
import pytest

from conftest import run_recipe, write_tone_corpus

TINY_CORPUS = [
    "--num_speakers=8",
    "--sentences_per_speaker=5",
    "--num_verification_speakers=3",
    "--valid_per_speaker=1",
    "--test_per_speaker=1",
]


@pytest.fixture(scope="module")
def synth_folder(tmp_path_factory):
    return str(tmp_path_factory.mktemp("corpus") / "synth")


@pytest.mark.parametrize("yaml", ["lim_nce.yaml", "lim_bce.yaml", "lim_mine.yaml", "supervised.yaml",
                                  "semisupervised.yaml"])
def test_demo_yaml_runs_end_to_end(yaml, synth_folder, tmp_path):
    results, proc = run_recipe(
        "Demo", yaml, tmp_path / "out", f"--synth_folder={synth_folder}", *TINY_CORPUS,
        pretrain=yaml != "supervised.yaml",
    )
    systems = results["systems"]
    assert systems, "no system was scored"
    for values in systems.values():
        for key in ("EER", "sentence_error", "chunk_error"):
            assert 0.0 <= values[key] <= 1.0
        assert values["minDCF_0.01"] >= 0.0
        assert values["target_trials"] > 0 and values["nontarget_trials"] > 0
        # Every row is calibrated on the training speakers: Cllr above what the scores allow, actDCF above minDCF.
        assert 0.0 <= values["minCllr"] <= values["Cllr"] + 1e-9
        assert values["actDCF_0.01"] >= values["minDCF_0.01"] - 1e-9
    if yaml.startswith("lim_"):
        # Every system is scored with every back end, one row each, named after it.
        names = [f"LIM ({yaml[4:-5]})", "random weights", "MFCC statistics"]
        rows = {"": "none", ", standardised": "standardize", ", whitened": "whiten", ", LDA": "lda", ", PLDA": "plda"}
        assert set(systems) == {n + suffix for n in names for suffix in rows}
        for suffix, backend in rows.items():
            assert {systems[n + suffix]["backend"] for n in names} == {backend}
    assert "EER %" in proc.stdout and "Cllr" in proc.stdout  # the table is printed


def test_demo_on_a_user_folder_and_rerun_resumes(tmp_path):
    folder = write_tone_corpus(str(tmp_path / "mine"), speakers=6, utterances=4, seconds=0.6)
    args = ["--data_folder=" + folder, "--num_verification_speakers=2", "--valid_per_speaker=1",
            "--test_per_speaker=1"]
    first, _ = run_recipe("Demo", "lim_nce.yaml", tmp_path / "out", *args)
    check_run_folder(tmp_path / "out", first)
    # A second run finds every stage finished and only re-evaluates: same numbers.
    second, proc = run_recipe("Demo", "lim_nce.yaml", tmp_path / "out", *args)
    assert second["systems"] == first["systems"]
    assert "Going into epoch" not in proc.stderr + proc.stdout
    # The same folder given to a run on other data is refused before anything in it changes.
    other = write_tone_corpus(str(tmp_path / "other"), speakers=6, utterances=4, seconds=0.6)
    before = folder_bytes(tmp_path / "out")
    _, proc = run_recipe("Demo", "lim_nce.yaml", tmp_path / "out", "--data_folder=" + other,
                         *args[1:], expect_ok=False)
    assert proc.returncode != 0 and "holds another run" in proc.stderr and "nothing was written" in proc.stderr
    assert folder_bytes(tmp_path / "out") == before


def folder_bytes(folder):
    """``{relative path: bytes}`` of every file below ``folder``."""
    import os

    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = f.read()
    return found


def test_demo_scores_with_as_norm_against_its_training_speakers_and_an_lda_row(tmp_path):
    """score_norm in the Demo: the cohort is the training speakers' utterances; lda is a row like the others."""
    import os

    folder = write_tone_corpus(str(tmp_path / "mine"), speakers=8, utterances=4, seconds=0.6)
    args = ["--data_folder=" + folder, "--num_verification_speakers=3", "--valid_per_speaker=1",
            "--test_per_speaker=1", "--score_baselines=False", "--verification_backends=[none,lda]"]
    plain, _ = run_recipe("Demo", "lim_nce.yaml", tmp_path / "plain", *args)
    normed, _ = run_recipe("Demo", "lim_nce.yaml", tmp_path / "normed", *args, "--score_norm=as-norm")  # top 50
    # 5 training speakers x 4 files: a cohort of 20, fewer than 50: all of it is used, and the log says so
    assert "cohort_top_k=50 is more than the 20 cohort utterances" in (tmp_path / "normed" / "log.txt").read_text()
    assert set(normed["systems"]) == {"LIM (nce)", "LIM (nce), LDA"} == set(plain["systems"])
    for row in normed["systems"].values():
        assert 0.0 <= row["minCllr"] <= row["Cllr"] + 1e-9
    # The same embeddings (same seed), other scores: the normalisation was applied, with its cohort kept.
    assert os.path.isfile(tmp_path / "normed" / "save" / "cohort" / "lim_nce.npz")
    assert not os.path.isfile(tmp_path / "plain" / "save" / "cohort" / "lim_nce.npz")
    assert (tmp_path / "normed" / "scores_lim_nce.txt.gz").read_bytes() != (
        tmp_path / "plain" / "scores_lim_nce.txt.gz").read_bytes()
    # Exported, the model normalises against the same whole cohort (top 20, not 50) and scores a pair.
    import subprocess
    import sys

    from sincmi.inference import SpeakerEncoder

    proc = subprocess.run([sys.executable, "-m", "sincmi", "export", str(tmp_path / "normed"), str(tmp_path / "model"),
                           "--backend", "lda", "--no_traced"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = SpeakerEncoder.from_hparams(source=str(tmp_path / "model"))
    assert model.cohort.method == "as-norm" and model.cohort.top_k == 20 and len(model.cohort.embeddings) == 20
    wavs = [os.path.join(folder, speaker, "session", "u0.wav") for speaker in ("spk0", "spk1")]
    assert np.isfinite(model.verify_files(*wavs).score)


def test_demo_missing_data_folder_is_explained(tmp_path):
    _, proc = run_recipe("Demo", "lim_nce.yaml", tmp_path / "out", f"--data_folder={tmp_path / 'missing'}",
                         expect_ok=False)
    assert proc.returncode != 0
    assert "does not exist" in proc.stderr + proc.stdout


def test_demo_without_a_gpu_for_device_cuda_is_refused_before_writing(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    _, proc = run_recipe("Demo", "lim_nce.yaml", tmp_path / "out", "--device=cuda:0", expect_ok=False)
    assert proc.returncode != 0 and "PyTorch sees no GPU here" in proc.stderr
    assert not (tmp_path / "out").exists()


def check_run_folder(out, results):
    """What a run leaves: its provenance, its own train.py, a quiet log, the main system's scores."""
    import os
    import subprocess

    provenance = results["provenance"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=os.path.dirname(__file__)).stdout.strip()
    assert provenance["git"]["commit"] == head and isinstance(provenance["git"]["modified"], bool)
    assert provenance["packages"]["torch"] and provenance["packages"]["speechbrain"]
    assert provenance["device"] == "cpu" and provenance["torch_threads"] >= 1 and provenance["seed"] == 1234
    assert "recipes/Demo/train.py" in provenance["command"] and "--data_folder=" in provenance["command"]
    assert {"prepare", "pretrain", "speaker_id", "verification", "total"} <= set(results["timings_s"])
    names = os.listdir(out)
    assert "train.py" in names and "stages.py" not in names and "hyperparams.yaml" in names
    log = open(out / "log.txt").read()
    assert " - matplotlib" not in log and "font_manager" not in log  # the library's loggers, not its version line
    assert "\r" not in log
    scores = sorted(n for n in names if n.startswith("scores_"))
    assert scores == ["scores_lim_nce.txt.gz", "scores_lim_nce_lda.txt.gz", "scores_lim_nce_plda.txt.gz",
                      "scores_lim_nce_standardize.txt.gz", "scores_lim_nce_whiten.txt.gz"]
