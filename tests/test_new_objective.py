"""docs/new_objective.md, followed as written: an estimator from the user's own module, no change to sincmi/."""

import json
import os
import shlex
import subprocess
import sys

from conftest import ROOT, TINY_MODEL, TINY_PRETRAIN, doc_blocks, walk_through_folder

DOC = os.path.join(ROOT, "docs", "new_objective.md")


def doc_steps():
    """``(files, commands)`` of the page, each command on one line."""
    files, commands = doc_blocks(DOC)
    return files, [block.replace("\\\n", " ").strip() for block in commands]


def test_the_new_objective_walk_through_runs_as_written(tmp_path):
    files, commands = doc_steps()
    assert list(files) == ["my_estimators.py"] and len(commands) == 2
    work, speakers = walk_through_folder(tmp_path, files)

    copy, run = commands
    proc = subprocess.run(copy, shell=True, cwd=work, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    yaml = (work / "lim_nwj.yaml").read_text()
    assert "objective: !new:my_estimators.NWJ" in yaml and "\nobjective_name: nwj " in yaml
    env_part, *args = shlex.split(run.replace("/path/to/speakers", speakers))
    assert env_part == "PYTHONPATH=." and args[0] == "python"
    args = [sys.executable] + args[1:] + TINY_MODEL + TINY_PRETRAIN + [
        "--num_verification_speakers=2", "--valid_per_speaker=1", "--test_per_speaker=1", "--score_baselines=False"]
    proc = subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH="."))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = work / "results" / "Demo" / "lim_nwj" / "1234"
    results = json.load(open(out / "results.json"))["systems"]
    assert {"LIM (nwj)", "LIM (nwj), whitened"} <= set(results)
    assert "Stage pretrain: LIM (nwj)" in (out / "log.txt").read_text()
    # The copied yaml with only the name changed is refused before any data work.
    (work / "renamed.yaml").write_text(yaml.replace("objective: !new:my_estimators.NWJ",
                                                    "objective: !new:sincmi.objectives.InfoNCE"))
    proc = subprocess.run([sys.executable, "recipes/Demo/train.py", "renamed.yaml", f"--data_folder={speakers}",
                           f"--output_folder={tmp_path / 'renamed'}"], cwd=work, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH="."))
    assert proc.returncode != 0 and "objective_name='nwj' names the run" in proc.stdout + proc.stderr
