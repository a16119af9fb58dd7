"""Using a trained model: export, the SpeakerEncoder interface, tools and plots.

One tiny Demo run (a tone corpus, a few seconds of training) is exported once
and shared by the tests of this module.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from hyperpyyaml import load_hyperpyyaml

from conftest import ROOT, run_recipe, write_tone_corpus
from sincmi import data
from sincmi.encoder import utterance_embeddings
from sincmi.inference import SpeakerEncoder, embed_dataset, file_embedding

PNG = b"\x89PNG\r\n\x1a\n"


def tool(name, *args, cwd=None):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    base = tmp_path_factory.mktemp("inference")
    corpus = write_tone_corpus(str(base / "corpus"), speakers=6, utterances=4, seconds=0.6)
    out = base / "exp"
    run_recipe("Demo", "lim_nce.yaml", out, f"--data_folder={corpus}", "--num_verification_speakers=2",
               "--valid_per_speaker=1", "--test_per_speaker=1", "--score_baselines=False")
    model = base / "model"
    summary = json.loads(tool("export_model.py", out, model).stdout)
    return {"base": base, "corpus": corpus, "exp": str(out), "model": str(model), "summary": summary}


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG and os.path.getsize(path) > 2000


def test_recipe_run_draws_its_plots(experiment):
    names = os.listdir(experiment["exp"])
    for name in ("training_curves.png", "det_lim_nce.png", "embeddings_lim_nce.png"):
        assert name in names and is_png(os.path.join(experiment["exp"], name)), name


def test_export_writes_a_self_contained_folder(experiment):
    model, summary = experiment["model"], experiment["summary"]
    for name in ("hyperparams.yaml", "encoder.ckpt", "classifier.ckpt", "label_encoder.txt",
                 "encoder_torchscript.pt", "encoder.pt2"):
        assert os.path.isfile(os.path.join(model, name)), name
    assert summary["stage"] == "speaker_id"
    # The threshold is the EER threshold of the run's verification scores.
    assert isinstance(summary["threshold"], float)
    assert 0.0 <= summary["eer"] <= 1.0
    results = json.load(open(os.path.join(experiment["exp"], "results.json")))
    assert summary["eer"] == pytest.approx(results["systems"]["LIM (nce)"]["EER"], abs=1e-6)


def _recipe_encoder(experiment):
    with open(os.path.join(experiment["exp"], "hyperparams.yaml")) as f:
        hparams = load_hyperpyyaml(f)
    encoder = hparams["encoder"]
    state = torch.load(os.path.join(experiment["summary"]["checkpoint"], "encoder.ckpt"), weights_only=True)
    encoder.load_state_dict(state)
    return encoder.eval(), hparams


def test_interface_embeddings_equal_the_recipe_evaluation(experiment):
    encoder, hparams = _recipe_encoder(experiment)
    rows = data.load_manifest(os.path.join(experiment["exp"], "save", "verification.csv"), experiment["corpus"])
    reference = embed_dataset(encoder, data.sentence_dataset(rows), shift=hparams["verification_shift"],
                              progress=False)
    model = SpeakerEncoder.from_hparams(source=experiment["model"])
    for key, row in list(rows.items())[:3]:
        torch.testing.assert_close(model.encode_file(row["wav"]), reference[key], rtol=1e-5, atol=1e-6)
    # encode_batch on a padded batch gives the same embeddings.
    keys = list(rows)[:3]
    wavs = [data.read_segment(rows[k]["wav"], 0, rows[k]["stop"]) for k in keys]
    padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    lens = torch.tensor([len(w) / padded.shape[1] for w in wavs])
    torch.testing.assert_close(model.encode_batch(padded, lens), torch.stack([reference[k] for k in keys]),
                               rtol=1e-5, atol=1e-6)


def test_long_files_are_embedded_block_by_block_with_the_same_result(experiment, tmp_path):
    model = SpeakerEncoder.from_hparams(source=experiment["model"])
    rng = np.random.default_rng(1)
    path = str(tmp_path / "long.wav")
    sf.write(path, (0.1 * rng.standard_normal(16000 * 8)).astype(np.float32), 16000, subtype="FLOAT")
    whole = utterance_embeddings(model.encoder, torch.from_numpy(sf.read(path, dtype="float32")[0])[None],
                                 None, model.encoder.chunk_size, model.hparams.shift)[0]
    with torch.no_grad():
        blocks = file_embedding(model.encoder, path, 16000, model.hparams.shift, block_chunks=7)
    torch.testing.assert_close(blocks, whole, rtol=1e-5, atol=1e-6)
    # A file at another sample rate is resampled to the model's.
    path_8k = str(tmp_path / "long_8k.wav")
    sf.write(path_8k, sf.read(path)[0][::2], 8000)
    assert model.encode_file(path_8k).shape == whole.shape


def test_verify_files_uses_the_stored_threshold(experiment):
    model = SpeakerEncoder.from_hparams(source=experiment["model"])
    corpus = experiment["corpus"]
    a, b = (os.path.join(corpus, s, "session", "u0.wav") for s in ("spk0", "spk1"))
    score, same = model.verify_files(a, b)
    assert -1.0 <= score <= 1.0
    assert same == (score >= experiment["summary"]["threshold"])
    assert model.verify_files(a, a)[0] == pytest.approx(1.0, abs=1e-5)
    assert model.verify_files(a, b, threshold=2.0)[1] is False


def test_exported_folder_loads_in_a_fresh_process(experiment):
    corpus = experiment["corpus"]
    a, b = (os.path.join(corpus, s, "session", "u1.wav") for s in ("spk2", "spk3"))
    code = ("import sys; from sincmi.inference import SpeakerEncoder; "
            "m = SpeakerEncoder.from_hparams(source=sys.argv[1]); print(m.verify_files(sys.argv[2], sys.argv[3])[0])")
    proc = subprocess.run([sys.executable, "-c", code, experiment["model"], a, b], capture_output=True,
                          text=True, timeout=120, cwd=str(experiment["base"]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    here = SpeakerEncoder.from_hparams(source=experiment["model"]).verify_files(a, b)[0]
    assert float(proc.stdout.strip().splitlines()[-1]) == pytest.approx(here, abs=1e-6)


def test_torchscript_export_matches_the_eager_encoder(experiment):
    traced = torch.jit.load(os.path.join(experiment["model"], "encoder_torchscript.pt"))
    model = SpeakerEncoder.from_hparams(source=experiment["model"])
    chunks = torch.randn(7, model.encoder.chunk_size)
    with torch.no_grad():
        torch.testing.assert_close(traced(chunks), model.encoder(chunks), rtol=1e-4, atol=1e-5)
    assert experiment["summary"]["torchscript_max_abs_diff"] < 1e-4


def test_torch_export_program_matches_the_eager_encoder(experiment):
    program = torch.export.load(os.path.join(experiment["model"], "encoder.pt2")).module()
    model = SpeakerEncoder.from_hparams(source=experiment["model"])
    chunks = torch.randn(9, model.encoder.chunk_size)
    with torch.no_grad():
        torch.testing.assert_close(program(chunks), model.encoder(chunks), rtol=1e-4, atol=1e-5)
    assert experiment["summary"]["torch_export_max_abs_diff"] < 1e-4


def test_extract_embeddings_on_a_folder_skips_broken_files(experiment, tmp_path):
    folder = tmp_path / "audio"
    shutil.copytree(experiment["corpus"], folder)
    (folder / "spk0" / "session" / "broken.wav").write_text("not audio")
    (folder / "spk1" / "session" / "empty.wav").write_bytes(b"")
    out = tmp_path / "emb" / "corpus"
    proc = tool("extract_embeddings.py", experiment["model"], folder, out)
    matrix = np.load(str(out) + ".npy")
    with open(str(out) + ".csv") as f:
        index = list(csv.DictReader(f))
    model = SpeakerEncoder.from_hparams(source=experiment["model"])
    assert matrix.shape == (24, model.encoder.embedding_size)  # 6 speakers x 4 files
    assert len(index) == 24 and {row["speaker"] for row in index} == {f"spk{i}" for i in range(6)}
    with open(str(out) + "_skipped.csv") as f:
        skipped = {os.path.basename(row["file"]): row["reason"] for row in csv.DictReader(f)}
    assert set(skipped) == {"broken.wav", "empty.wav"}
    assert "2 file(s) skipped" in proc.stdout
    first = index[0]["path"]
    np.testing.assert_allclose(matrix[0], model.encode_file(first).numpy(), rtol=1e-4, atol=1e-5)


def test_extract_embeddings_from_a_manifest_as_pt(experiment, tmp_path):
    manifest = os.path.join(experiment["exp"], "save", "verification.csv")
    out = tmp_path / "verification"
    tool("extract_embeddings.py", experiment["model"], manifest, out, "--format", "pt",
         "--data_root", experiment["corpus"])
    saved = torch.load(str(out) + ".pt", weights_only=True)
    with open(manifest) as f:
        rows = list(csv.DictReader(f))
    assert saved["ids"] == [row["ID"] for row in rows]
    assert saved["speakers"] == [row["spk_id"] for row in rows]
    assert saved["embeddings"].shape[0] == len(rows)
    # plot_experiment draws the map from it, and the run's curves and DET again.
    figures = tmp_path / "figures"
    tool("plot_experiment.py", experiment["exp"], "--embeddings", str(out) + ".pt", "--out_folder", figures)
    for name in ("training_curves.png", "det_lim_nce.png", "embeddings_map.png"):
        assert is_png(figures / name), name


def test_readme_example_runs(experiment, tmp_path):
    """The README's "Use a trained model" lines, run on the tiny experiment laid out as a Demo run."""
    with open(os.path.join(ROOT, "README.md")) as f:
        section = f.read().split("## Use a trained model", 1)[1].split("\n## ", 1)[0]
    shell = re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip()
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(python.strip().splitlines()) <= 5
    # Lay the tiny run out where the README expects the Demo's.
    os.makedirs(tmp_path / "results" / "Demo" / "lim_nce")
    os.symlink(experiment["exp"], tmp_path / "results" / "Demo" / "lim_nce" / "1234")
    for speaker in ("spk000", "spk001"):
        os.makedirs(tmp_path / "results" / "Demo" / "corpus" / speaker)
        source = os.path.join(experiment["corpus"], f"spk{int(speaker[3:])}", "session", "u0.wav")
        shutil.copy(source, tmp_path / "results" / "Demo" / "corpus" / speaker / f"{speaker}_u000.wav")
    args = shell.split()
    assert args[:2] == ["python", "tools/export_model.py"]
    tool("export_model.py", *args[2:], cwd=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", python + "\nprint('score', score, same_speaker)"],
                          capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"score -?[0-9.]+ (True|False)", proc.stdout)
