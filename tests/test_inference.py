"""Using a trained model: export, the SpeakerEncoder interface, tools and plots.

One tiny Demo run (a tone corpus, a few seconds of training) is exported once
and shared by the tests of this module.
"""

import csv
import json
import math
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

from conftest import ROOT, SHARED_DATA, run_recipe, write_tone_corpus
from sincmi import data
from sincmi.calibration import Calibration, bayes_threshold
from sincmi.encoder import utterance_embeddings
from sincmi.inference import SpeakerEncoder, file_embedding
from sincmi.verification import embed_dataset
from sincmi.scoring import read_scores
from sincmi.thresholds import operating_point, score_summary

PNG = b"\x89PNG\r\n\x1a\n"


def tool(name, *args, cwd=None):
    """Runs ``tools/<name>``, or ``python -m sincmi <command>`` for a name without ``.py``."""
    command = [os.path.join(ROOT, "tools", name)] if name.endswith(".py") else ["-m", "sincmi", name]
    proc = subprocess.run([sys.executable, *command, *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    base = tmp_path_factory.mktemp("inference")
    corpus = write_tone_corpus(str(base / "corpus"), speakers=6, utterances=4, seconds=0.6)
    out = base / "exp"
    run_recipe("Demo", "lim_nce.yaml", out, f"--data_folder={corpus}", "--num_verification_speakers=2",
               "--valid_per_speaker=1", "--test_per_speaker=1", "--score_baselines=False",
               "--score_norm=null")  # cosine scores; every back end of the yaml
    model = base / "model"
    summary = json.loads(tool("export", out, model, "--backend", "none").stdout)  # the encoder alone
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
    for name in ("hyperparams.yaml", "encoder.ckpt", "classifier.ckpt", "label_encoder.ckpt", "calibration.ckpt", "score_summary.ckpt",
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


def test_verify_files_decides_with_the_calibration_or_a_given_threshold(experiment):
    model = SpeakerEncoder.from_hparams(source=experiment["model"])
    corpus = experiment["corpus"]
    a, b = (os.path.join(corpus, s, "session", "u0.wav") for s in ("spk0", "spk1"))
    score, same, point, llr = model.verify_files(a, b)
    assert -1.0 <= score <= 1.0
    # The log-likelihood ratio is the run's calibration of the score; the decision the Bayes one at p_target.
    calibration = model.calibration
    assert calibration.transform == "atanh"  # a cosine score: Fisher's z
    assert llr == pytest.approx(calibration.scale * math.atanh(score) + calibration.offset)
    assert point.name == "Bayes decision at p_target=0.01" and same == (llr > bayes_threshold(0.01))
    # ... the same decision as a threshold on the score
    assert calibration(point.threshold) == pytest.approx(bayes_threshold(0.01)) and same == (score > point.threshold)
    assert model.verify_files(a, b, p_target=0.5).same_speaker == (llr > 0)
    # The stored threshold (the EER point of the run's trials) on request
    stored = model.verify_files(a, b, threshold=model.threshold)
    assert model.threshold == pytest.approx(experiment["summary"]["threshold"], abs=1e-6)
    assert stored.same_speaker == (score > model.threshold)
    assert model.verify_files(a, a).score == pytest.approx(1.0, abs=1e-5)
    assert model.verify_files(a, b, threshold=2.0).same_speaker is False
    assert model.verify_files(a, b, threshold=-2.0).same_speaker is True


def test_operating_points_are_chosen_on_the_runs_trials(experiment):
    """The stored summary is that of the run's scores: each operating point has the error rates it names."""
    model = SpeakerEncoder.from_hparams(source=experiment["model"])
    targets, nontargets = read_scores(os.path.join(experiment["exp"], "scores_lim_nce.txt.gz"))
    for spec in ("far=0.1", "frr=0.2", "eer"):
        point = model.operating_point(spec)
        far = float((nontargets > point.threshold).mean())
        frr = float((targets <= point.threshold).mean())
        assert (far, frr) == pytest.approx((point.far, point.frr), abs=1e-9), spec
        if spec.startswith("far"):
            assert far <= 0.1
        if spec.startswith("frr"):
            assert frr <= 0.2
    a, b = (os.path.join(experiment["corpus"], s, "session", "u0.wav") for s in ("spk0", "spk1"))
    result = model.verify_files(a, b, threshold="far=0.1")
    assert result.operating_point == model.operating_point("far=0.1")
    assert result.same_speaker == (result.score > result.operating_point.threshold)
    with pytest.raises(ValueError, match="far=<rate>"):
        model.verify_files(a, b, threshold="far=high")


def test_export_threshold_at_a_chosen_operating_point(experiment, tmp_path):
    out = tmp_path / "model_far"
    summary = json.loads(tool("export", experiment["exp"], out, "--threshold", "far=0.05",
                              "--no_traced", "--backend", "none").stdout)
    targets, nontargets = read_scores(os.path.join(experiment["exp"], "scores_lim_nce.txt.gz"))
    expected = operating_point(score_summary(targets, nontargets), "far=0.05")
    assert summary["threshold"] == pytest.approx(expected.threshold)
    model = SpeakerEncoder.from_hparams(source=str(out))
    assert model.hparams.operating_point == "far=0.05"
    assert model.threshold == pytest.approx(expected.threshold, abs=1e-6)
    proc = subprocess.run([sys.executable, "-m", "sincmi", "export", experiment["exp"],
                           str(tmp_path / "bad"), "--threshold", "far"], capture_output=True, text=True)
    assert proc.returncode != 0 and "eer" in proc.stderr and "far=<rate>" in proc.stderr


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
    proc = tool("embed", experiment["model"], folder, out)
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
    tool("embed", experiment["model"], manifest, out, "--format", "pt",
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
        os.makedirs(tmp_path / "results" / "Demo" / "corpus_1234" / speaker)
        source = os.path.join(experiment["corpus"], f"spk{int(speaker[3:])}", "session", "u0.wav")
        shutil.copy(source, tmp_path / "results" / "Demo" / "corpus_1234" / speaker / f"{speaker}_u000.wav")
    args = shell.splitlines()[0].split()
    assert args[:4] == ["python", "-m", "sincmi", "export"]
    proc = sincmi_cli(*args[3:], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-c", python + "\nprint('score', score, same_speaker, point.name)"],
                          capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"score -?[0-9.]+ (True|False) Bayes decision at p_target=0.01", proc.stdout)


def real_speech_files(count=2):
    """Real recordings from ../shared/data (the test skips without them)."""
    folder = os.path.join(SHARED_DATA, "LibriSpeech_100speakers")
    if not os.path.isdir(folder):
        pytest.skip("../shared/data is absent")
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                   if name.endswith((".flac", ".wav")))
    return files[:count]


def test_onnx_export_matches_the_eager_encoder_on_real_speech(experiment):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = SpeakerEncoder.from_hparams(source=experiment["model"])
    assert experiment["summary"]["onnx_relative_error"] < 1e-4  # checked at export, on noise
    session = onnxruntime.InferenceSession(os.path.join(experiment["model"], "encoder.onnx"),
                                           providers=["CPUExecutionProvider"])
    size = model.encoder.chunk_size
    for path in real_speech_files():
        wav = torch.from_numpy(sf.read(path, dtype="float32")[0])
        for batch in (1, 13):  # the batch axis is dynamic
            chunks = wav.unfold(0, size, size // 2)[:batch].contiguous()
            output = session.run(["embeddings"], {"chunks": chunks.numpy()})[0]
            with torch.no_grad():
                reference = model.encoder(chunks).numpy()
            relative = np.linalg.norm(output - reference, axis=1) / np.linalg.norm(reference, axis=1)
            assert relative.max() < 1e-4, (path, batch, relative.max())


def test_onnx_snippet_embeds_a_file_like_the_speaker_encoder(experiment):
    pytest.importorskip("onnxruntime")
    import importlib.util

    spec = importlib.util.spec_from_file_location("onnx_embed", os.path.join(ROOT, "sincmi", "onnx_embed.py"))
    onnx_embed = importlib.util.module_from_spec(spec)  # standalone: the file alone, as a user copies it
    spec.loader.exec_module(onnx_embed)
    onnx_model = onnx_embed.OnnxSpeakerEncoder(experiment["model"])
    model = SpeakerEncoder.from_hparams(source=experiment["model"])
    for path in real_speech_files():
        reference = model.encode_file(path).numpy()
        embedding = onnx_model.encode_file(path)
        assert np.linalg.norm(embedding - reference) / np.linalg.norm(reference) < 1e-4
    proc = subprocess.run(["sincmi-onnx-embed", experiment["model"],
                           *real_speech_files()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    score = float(re.search(r"score (-?[0-9.]+)", proc.stdout).group(1))
    a, b = real_speech_files()
    assert score == pytest.approx(model.verify_files(a, b).score, abs=1e-4)


def write_segments(path, windows, folder):
    """Writes each ``(start, end)`` second window of ``path`` as its own file."""
    wav, rate = sf.read(path, dtype="float32")
    paths = []
    for i, (start, end) in enumerate(windows):
        out = os.path.join(folder, f"segment{i}.wav")
        sf.write(out, wav[int(round(start * rate)):int(round(end * rate))], rate, subtype="FLOAT")
        paths.append(out)
    return paths


@pytest.mark.parametrize("rate", [16000, 8000])
def test_window_embeddings_equal_embedding_the_cut_segments(experiment, tmp_path, rate):
    model = SpeakerEncoder.from_hparams(source=experiment["model"])
    rng = np.random.default_rng(3)
    path = str(tmp_path / "long.wav")
    seconds = 3.3
    sf.write(path, (0.1 * rng.standard_normal(int(rate * seconds))).astype(np.float32), rate, subtype="FLOAT")
    times, embeddings = model.encode_file(path, window=1.0, hop=0.4)
    # Windows every 0.4 s while a whole second fits: 0, 0.4, ..., 2.0.
    np.testing.assert_allclose(times[:, 0].numpy(), np.arange(6) * 0.4, atol=1e-9)
    np.testing.assert_allclose((times[:, 1] - times[:, 0]).numpy(), 1.0, atol=1e-9)
    segments = write_segments(path, times.tolist(), tmp_path)
    for embedding, segment in zip(embeddings, segments):
        torch.testing.assert_close(embedding, model.encode_file(segment), rtol=1e-5, atol=1e-6)
    # A file shorter than the window is one window over the whole file.
    short_times, short = model.encode_file(segments[0], window=5.0)
    assert short.shape[0] == 1 and short_times[0, 1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="hop needs a window"):
        model.encode_file(path, hop=0.5)


def test_extract_embeddings_over_time_writes_one_row_per_window(experiment, tmp_path):
    folder = tmp_path / "audio" / "spkA"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(4)
    sf.write(str(folder / "long.wav"), (0.1 * rng.standard_normal(16000 * 3)).astype(np.float32), 16000)
    out = tmp_path / "emb" / "windows"
    tool("embed", experiment["model"], tmp_path / "audio", out, "--window", "1.5", "--hop", "0.5")
    matrix = np.load(str(out) + ".npy")
    with open(str(out) + ".csv") as f:
        index = list(csv.DictReader(f))
    assert [float(row["start"]) for row in index] == [0.0, 0.5, 1.0, 1.5]
    assert all(float(row["end"]) - float(row["start"]) == pytest.approx(1.5) for row in index)
    assert {row["speaker"] for row in index} == {"spkA"}
    model = SpeakerEncoder.from_hparams(source=experiment["model"])
    _, expected = model.encode_file(str(folder / "long.wav"), window=1.5, hop=0.5)
    np.testing.assert_allclose(matrix, expected.numpy(), rtol=1e-5, atol=1e-6)


def sincmi_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sincmi", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_command_line_verify_and_embed(experiment, tmp_path):
    corpus = experiment["corpus"]
    a, b = (os.path.join(corpus, s, "session", "u0.wav") for s in ("spk0", "spk1"))
    proc = sincmi_cli("verify", experiment["model"], a, b, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = SpeakerEncoder.from_hparams(source=experiment["model"])
    expected = model.verify_files(a, b)
    assert float(re.search(r"score (-?[0-9.]+)", proc.stdout).group(1)) == pytest.approx(expected.score, abs=1e-4)
    assert f"log-likelihood ratio {expected.llr:.2f}" in proc.stdout
    assert f"same speaker: {'yes' if expected.same_speaker else 'no'} (operating point Bayes decision at p_target=0.01" \
        in proc.stdout
    proc = sincmi_cli("verify", experiment["model"], a, b, "--threshold", "-1", cwd=str(tmp_path))
    assert "same speaker: yes (operating point -1" in proc.stdout
    proc = sincmi_cli("verify", experiment["model"], a, str(tmp_path / "missing.wav"))
    assert proc.returncode != 0 and "missing.wav does not exist" in proc.stderr
    proc = sincmi_cli("embed", experiment["model"], corpus, tmp_path / "out" / "corpus")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert np.load(str(tmp_path / "out" / "corpus.npy")).shape[0] == 24
    assert sincmi_cli("frobnicate").returncode == 2


def test_command_line_threshold_on_known_pairs_of_ones_own_files(experiment, tmp_path):
    corpus = experiment["corpus"]
    pairs = tmp_path / "pairs.txt"
    lines = []
    for s in range(6):
        lines.append(f"1 {corpus}/spk{s}/session/u0.wav {corpus}/spk{s}/session/u1.wav")
        lines.append(f"0 {corpus}/spk{s}/session/u0.wav {corpus}/spk{(s + 1) % 6}/session/u2.wav")
    pairs.write_text("\n".join(lines) + "\n")
    model_folder = tmp_path / "model"
    shutil.copytree(experiment["model"], model_folder)
    proc = sincmi_cli("threshold", model_folder, pairs, "--set", "frr=0.5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "12 pairs (6 same speaker, 6 different)" in proc.stdout and "stored in" in proc.stdout
    # Six different-speaker pairs cannot show a FAR of 1 %: said, with the count needed.
    assert "far=0.01: a FAR of 1 % needs about 300 different-speaker pairs; there are 6" in proc.stderr
    model = SpeakerEncoder.from_hparams(source=str(model_folder))
    assert model.hparams.operating_point == "frr=0.5"
    scores = [(line[0] == "1", model.verify_files(*line.split()[1:]).score) for line in lines]
    frr = np.mean([score <= model.threshold for same, score in scores if same])
    assert frr <= 0.5
    # The run's summary stays unless asked: --replace_summary puts the pairs' in its place.
    run_summary = model.score_summary
    assert (run_summary["target_trials"], run_summary["nontarget_trials"]) != (6, 6)
    proc = sincmi_cli("threshold", model_folder, pairs, "--set", "frr=0.5", "--replace_summary")
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = SpeakerEncoder.from_hparams(source=str(model_folder))
    assert model.score_summary["target_trials"] == 6 and model.score_summary["nontarget_trials"] == 6
    # Recalibration on the pairs: a new calibration, the run's kept beside it.
    run_calibration = open(model_folder / "calibration.ckpt").read()
    proc = sincmi_cli("threshold", model_folder, pairs, "--calibrate")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "calibration for decisions at p_target=0.01 needs about 300 different-speaker" in proc.stderr
    assert open(model_folder / "calibration_run.ckpt").read() == run_calibration
    recalibrated = SpeakerEncoder.from_hparams(source=str(model_folder)).calibration
    same = [score for label, score in scores if label]
    different = [score for label, score in scores if not label]
    assert recalibrated.source.startswith("12 pairs")
    assert recalibrated.as_dict() == Calibration.fit(same, different, 0.01, recalibrated.source, "atanh").as_dict()
    pairs.write_text("1 nowhere.wav nowhere.wav\n")
    proc = sincmi_cli("threshold", model_folder, pairs)
    assert proc.returncode != 0 and "pairs.txt:1" in proc.stderr and "does not exist" in proc.stderr


@pytest.fixture(scope="module")
def whitened_model(experiment):
    """The tiny run exported with its whitening back end (cosine scores after a fitted transform)."""
    model = experiment["base"] / "model_whiten"
    summary = json.loads(tool("export", experiment["exp"], model, "--backend", "whiten").stdout)
    return str(model), summary


@pytest.fixture(scope="module", params=["whiten", "plda"])
def backend_model(experiment, whitened_model, request):
    """The tiny run exported with a back end: whitening (cosine scores), PLDA (its log-likelihood ratio)."""
    if request.param == "whiten":
        return whitened_model
    model = experiment["base"] / "model_plda"
    summary = json.loads(tool("export", experiment["exp"], model, "--backend", "plda").stdout)
    return str(model), summary


def test_the_exported_back_end_scores_the_trials_as_the_run_did(experiment, backend_model, tmp_path):
    from sincmi.backend import BACKEND_LABELS

    model, summary = backend_model
    backend = summary["backend"]
    assert os.path.isfile(os.path.join(model, "backend.ckpt"))
    with open(os.path.join(experiment["exp"], "results.json")) as f:
        run_eer = json.load(f)["systems"]["LIM (nce)" + BACKEND_LABELS[backend]]["EER"]
    assert summary["eer"] == pytest.approx(run_eer)  # the threshold is that back end's
    # The run's verification files, embedded by the command line and scored by the tool
    save = os.path.join(experiment["exp"], "save")
    embedded = tool("embed", model, os.path.join(save, "verification.csv"), tmp_path / "emb", "--data_root",
                    experiment["corpus"])
    assert ("the model scores with PLDA" in embedded.stdout) == (backend == "plda")  # says how to score them
    tool("score", str(tmp_path / "emb") + ".npy", os.path.join(save, "trials.txt"),
         "--out_folder", tmp_path / "scored", "--model", model)
    with open(tmp_path / "scored" / "results.json") as f:
        assert json.load(f)["EER"] == pytest.approx(run_eer, abs=0.0005)  # within 0.05 points
    ours = {tuple(line.split()[:2]): float(line.split()[2]) for line in open(tmp_path / "scored" / "scores.txt")}
    import gzip
    with gzip.open(os.path.join(experiment["exp"], f"scores_lim_nce_{backend}.txt.gz"), "rt") as f:
        run = {tuple(line.split()[:2]): float(line.split()[2]) for line in f}
    assert ours.keys() == run.keys()
    assert max(abs(ours[key] - run[key]) for key in run) < 1e-4
    # The raw model scores otherwise
    raw = SpeakerEncoder.from_hparams(source=experiment["model"])
    after = SpeakerEncoder.from_hparams(source=model).encode_file(
        os.path.join(experiment["corpus"], "spk0", "session", "u0.wav"))
    before = raw.encode_file(os.path.join(experiment["corpus"], "spk0", "session", "u0.wav"))
    assert before.shape != after.shape or not torch.allclose(before, after)


def test_onnx_snippet_scores_a_pair_as_verify_does_with_the_back_end(backend_model, tmp_path):
    pytest.importorskip("onnxruntime")
    model, _ = backend_model
    a, b = real_speech_files()
    proc = subprocess.run(["sincmi-onnx-embed", model, a, b],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    onnx_score = float(re.search(r"score (-?[0-9.]+)", proc.stdout).group(1))
    proc = sincmi_cli("verify", model, a, b)
    assert proc.returncode == 0, proc.stderr[-2000:]
    verify_score = float(re.search(r"score (-?[0-9.]+)", proc.stdout).group(1))
    verified = SpeakerEncoder.from_hparams(source=model).verify_files(a, b)
    exact = verified.score
    assert verify_score == pytest.approx(exact, abs=5e-5)  # printed with 4 decimals
    import importlib.util

    spec = importlib.util.spec_from_file_location("onnx_embed", os.path.join(ROOT, "sincmi", "onnx_embed.py"))
    onnx_embed = importlib.util.module_from_spec(spec)  # standalone: the file alone, as a user copies it
    spec.loader.exec_module(onnx_embed)
    onnx_model = onnx_embed.OnnxSpeakerEncoder(model)
    onnx_exact = onnx_model.score(onnx_model.encode_file(a), onnx_model.encode_file(b))
    assert onnx_exact == pytest.approx(exact, rel=1e-4)
    assert onnx_score == pytest.approx(onnx_exact, abs=5e-5)
    # ... and calibrates it as verify does (atanh of a cosine, PLDA's ratio as it is)
    assert verified.llr is not None and onnx_model.llr(onnx_exact) == pytest.approx(verified.llr, rel=1e-4, abs=1e-3)
    # A file at another rate is resampled with verify's filter; audio shorter than a chunk is refused.
    wav, rate = sf.read(b, dtype="float32")
    b_8k, short = str(tmp_path / "b_8k.wav"), str(tmp_path / "short.wav")
    sf.write(b_8k, wav[::2], rate // 2)
    sf.write(short, wav[:100], rate)
    reference = SpeakerEncoder.from_hparams(source=model)
    assert onnx_model.score(onnx_model.encode_file(a), onnx_model.encode_file(b_8k)) == pytest.approx(
        reference.verify_files(a, b_8k).score, rel=1e-4)
    proc = subprocess.run(["sincmi-onnx-embed", model, a, short], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "shorter than one chunk" in proc.stderr and proc.stderr.count("\n") == 1


def test_export_refuses_a_back_end_the_run_did_not_fit(experiment, tmp_path):
    proc = sincmi_cli("export", experiment["exp"], tmp_path / "m", "--backend", "center", "--no_traced")
    assert proc.returncode != 0
    assert "no fitted 'center' back end" in proc.stderr and "verification_backends" in proc.stderr


def test_command_line_errors_come_before_any_work(experiment, tmp_path):
    proc = sincmi_cli("bogus")
    assert proc.returncode == 2 and "unknown command 'bogus'" in proc.stderr
    # A missing audio file is named before the model is loaded (here: a folder that is no model)
    proc = sincmi_cli("verify", tmp_path / "not_a_model", tmp_path / "a.wav", tmp_path / "b.wav")
    assert proc.returncode != 0 and "a.wav does not exist" in proc.stderr


def test_score_trials_reads_what_embed_writes_in_either_format(experiment, tmp_path):
    save = os.path.join(experiment["exp"], "save")
    results = {}
    for fmt in ("npy", "pt"):
        tool("embed", experiment["model"], os.path.join(save, "verification.csv"), tmp_path / fmt / "emb",
             "--data_root", experiment["corpus"], "--format", fmt)
        tool("score", tmp_path / fmt / f"emb.{fmt}", os.path.join(save, "trials.txt"),
             "--out_folder", tmp_path / fmt)
        with open(tmp_path / fmt / "results.json") as f:
            results[fmt] = json.load(f)["EER"]
    assert results["npy"] == results["pt"]
    torch.save({"utt": torch.ones(3)}, tmp_path / "old.pt")  # not embed's format: explained
    proc = subprocess.run([sys.executable, "-m", "sincmi", "score", str(tmp_path / "old.pt"),
                           os.path.join(save, "trials.txt")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "python -m sincmi embed" in proc.stderr


def test_speechbrain_interfaces_load_the_exported_model(experiment, whitened_model, tmp_path):
    """SpeechBrain's own EncoderClassifier and SpeakerRecognition, with a savedir (files fetched, not read in place)."""
    from speechbrain.inference.speaker import EncoderClassifier, SpeakerRecognition

    model, _ = whitened_model
    ours = SpeakerEncoder.from_hparams(source=model)
    classifier = EncoderClassifier.from_hparams(source=model, savedir=str(tmp_path / "classifier"))
    fetched = sorted(os.listdir(tmp_path / "classifier"))
    assert fetched == sorted(["hyperparams.yaml", "encoder.ckpt", "backend.ckpt", "calibration.ckpt",
                              "score_summary.ckpt", "classifier.ckpt", "label_encoder.ckpt"])
    wavs = 0.1 * torch.randn(3, 16000)
    lens = torch.tensor([1.0, 0.8, 0.5])
    torch.testing.assert_close(classifier.encode_batch(wavs, lens).squeeze(1), ours.encode_batch(wavs, lens))
    torch.testing.assert_close(classifier.encode_batch(wavs, lens, normalize=True).squeeze(1),
                               ours.encode_batch(wavs, lens, normalize=True))
    # classify_file: the run's classifier, each sentence scored as the recipe scores it (sum of its chunks').
    encoder, hparams = _recipe_encoder(experiment)
    head = hparams["classifier"](input_size=encoder.embedding_size, num_speakers=4).eval()
    head.load_state_dict(torch.load(os.path.join(experiment["summary"]["checkpoint"], "classifier.ckpt"),
                                    weights_only=True))
    labels = [line.split("=>")[0].strip().strip("'") for line in open(os.path.join(model, "label_encoder.ckpt"))
              if "=>" in line]
    rows = data.load_manifest(os.path.join(experiment["exp"], "save", "test.csv"), experiment["corpus"])
    for key, row in rows.items():
        _, _, index, text = classifier.classify_file(row["wav"])
        wav = data.read_segment(row["wav"], 0, row["stop"])
        chunks = wav.unfold(0, encoder.chunk_size, hparams["verification_shift"])
        with torch.no_grad():
            expected = int(head(encoder(chunks)).sum(0).argmax())
        assert int(index) == expected and text == [labels[expected]], key
    # verify_files: the score of python -m sincmi verify (back end included)
    recognition = SpeakerRecognition.from_hparams(source=model, savedir=str(tmp_path / "recognition"))
    a, b = (os.path.join(experiment["corpus"], s, "session", "u1.wav") for s in ("spk1", "spk2"))
    score, _ = recognition.verify_files(a, b)
    proc = sincmi_cli("verify", model, a, b)
    assert float(score) == pytest.approx(float(re.search(r"score (-?[0-9.]+)", proc.stdout).group(1)), abs=5e-5)
    # Our own interface from a savedir scores as in place.
    elsewhere = SpeakerEncoder.from_hparams(source=model, savedir=str(tmp_path / "ours"))
    assert elsewhere.verify_files(a, b) == ours.verify_files(a, b)


def test_short_empty_and_unreadable_audio_are_refused_in_one_line(experiment, whitened_model, tmp_path):
    model, _ = whitened_model
    ours = SpeakerEncoder.from_hparams(source=model)
    good = os.path.join(experiment["corpus"], "spk0", "session", "u0.wav")
    empty, short, broken = tmp_path / "empty.wav", tmp_path / "short.wav", tmp_path / "broken.wav"
    sf.write(str(empty), np.zeros(0, dtype=np.float32), 16000)
    sf.write(str(short), 0.1 * np.ones(80, dtype=np.float32), 16000)  # 5 ms
    broken.write_text("not audio")
    from sincmi.inference import TooShortError

    with pytest.raises(TooShortError, match="is empty"):
        ours.encode_file(str(empty))
    with pytest.raises(TooShortError, match="80 samples"):
        ours.verify_files(good, str(short))
    assert ours.encode_file(str(short), pad_short=True).shape == ours.encode_file(good).shape
    with pytest.raises(TooShortError, match="utterance 1 of the batch"):
        ours.encode_batch(torch.randn(2, 16000), torch.tensor([1.0, 0.1]))
    with pytest.raises(ValueError, match="cannot be read as audio"):
        ours.encode_file(str(broken))
    for path, reason in ((empty, "is empty"), (short, "80 samples"), (broken, "cannot be read as audio"),
                         (tmp_path / "missing.wav", "does not exist")):
        proc = sincmi_cli("verify", model, good, path)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and reason in proc.stderr, proc.stderr
    assert sincmi_cli("verify", model, good, short, "--pad_short").returncode == 0


def test_wrong_folders_and_devices_are_refused_in_one_line(experiment, whitened_model, tmp_path):
    model, _ = whitened_model
    good = os.path.join(experiment["corpus"], "spk0", "session", "u0.wav")
    cases = [(("verify", experiment["exp"], good, good), "is a recipe run, not a model"),
             (("verify", tmp_path / "nowhere", good, good), "does not exist"),
             (("verify", experiment["corpus"], good, good), "is not a model folder"),
             (("embed", experiment["exp"], experiment["corpus"], tmp_path / "e"), "is a recipe run, not a model"),
             (("export", model, tmp_path / "m"), "is an exported model, not a recipe run"),
             (("export", experiment["exp"], experiment["exp"]), "holds no exported model")]
    if not torch.cuda.is_available():
        cases.append((("verify", model, good, good, "--device", "cuda"), "sees no GPU"))
    for args, reason in cases:
        proc = sincmi_cli(*args)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and reason in proc.stderr, (args, proc.stderr)
    assert not os.path.exists(tmp_path / "m") and not os.path.exists(tmp_path / "e.npy")


def test_embed_follows_links_and_fails_when_nothing_is_embedded(experiment, tmp_path):
    corpus, model = experiment["corpus"], experiment["model"]
    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink(os.path.join(corpus, "spk0"), linked / "spk0")  # a speaker folder that is a link
    os.makedirs(linked / "spk1")
    os.symlink(os.path.join(corpus, "spk1", "session"), linked / "spk1" / "session")  # a linked sub-folder
    proc = sincmi_cli("embed", model, linked, tmp_path / "l")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert np.load(str(tmp_path / "l.npy")).shape[0] == 8
    (tmp_path / "empty").mkdir()
    short = tmp_path / "short" / "spk"
    short.mkdir(parents=True)
    sf.write(str(short / "a.wav"), 0.1 * np.ones(80, dtype=np.float32), 16000)
    for source, reason in ((tmp_path / "empty", "holds no audio file"), (tmp_path / "short", "could be embedded"),
                           (os.path.join(experiment["exp"], "save", "verification.csv"), "pass --data_root"),
                           (tmp_path / "nowhere", "does not exist")):
        proc = sincmi_cli("embed", model, source, tmp_path / "out")
        assert proc.returncode == 1 and reason in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert "shorter than one chunk" in open(tmp_path / "out_skipped.csv").read()
    assert not os.path.exists(tmp_path / "out.npy")
