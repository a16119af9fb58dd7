"""docs/new_encoder.md, followed as written: SpeechBrain's ECAPA-TDNN from the user's own module,
trained with LIM, exported and used for verification; no change to sincmi/."""

import json
import os
import re
import shlex
import subprocess
import sys

from conftest import ROOT, TINY_MODEL, TINY_PRETRAIN, doc_blocks, walk_through_folder

DOC = os.path.join(ROOT, "docs", "new_encoder.md")


def test_the_new_encoder_walk_through_runs_as_written(tmp_path):
    files, (copy, use) = doc_blocks(DOC)
    assert list(files) == ["my_encoders.py"]
    work, speakers = walk_through_folder(tmp_path, files)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [".", os.environ.get("PYTHONPATH")])))

    proc = subprocess.run(copy, shell=True, executable="/bin/bash", cwd=work, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "encoder: !new:my_encoders.ECAPAEncoder" in (work / "lim_nce_ecapa.yaml").read_text()

    train, export, verify = [line for line in use.strip().splitlines()]
    a, b = (os.path.join(speakers, spk, "session", "u0.wav") for spk in ("spk0", "spk1"))
    runs = [(train.replace("/path/to/speakers", speakers), TINY_MODEL + TINY_PRETRAIN + [
                "--num_verification_speakers=2", "--valid_per_speaker=1", "--test_per_speaker=1"]),
            (export, []), (verify.replace("/path/to/a.wav", a).replace("/path/to/b.wav", b), [])]
    outputs = []
    for command, extra in runs:
        env_part, python, *args = shlex.split(command)
        assert env_part == "PYTHONPATH=." and python == "python"
        proc = subprocess.run([sys.executable, *args, *extra], cwd=work, capture_output=True, text=True,
                              timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        outputs.append(proc.stdout)
    results = json.load(open(work / "results" / "Demo" / "lim_nce_ecapa" / "1234" / "results.json"))["systems"]
    assert {"LIM (nce), ECAPA", "LIM (nce), ECAPA, whitened", "random weights", "MFCC statistics"} <= set(results)
    summary = json.loads(outputs[1])
    assert summary["stage"] == "speaker_id" and summary["backend"] == "none"  # the yaml's export_backend
    model_yaml = (work / "pretrained" / "ecapa_lim" / "hyperparams.yaml").read_text()
    assert "encoder: !new:my_encoders.ECAPAEncoder" in model_yaml
    for key in ("torchscript_max_abs_diff", "torch_export_max_abs_diff", "onnx_relative_error"):
        value = summary.get(key, summary.get("onnx"))  # a parity error, or why the copy was skipped
        assert isinstance(value, float) and value < 1e-3 or str(value).startswith("skipped"), (key, value)
    assert re.search(r"score -?[0-9.]+\nlog-likelihood ratio -?[0-9.]+", outputs[2]), outputs[2]
    assert "same speaker: " in outputs[2]
