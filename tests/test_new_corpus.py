"""docs/new_corpus.md, followed step by step on a small corpus in its layout (utt2spk + a flat wav/ folder)."""

import json
import os
import re
import shlex
import subprocess
import sys

import soundfile as sf

from conftest import ROOT, TINY_MODEL, TINY_PRETRAIN, write_tone_corpus

DOC = os.path.join(ROOT, "docs", "new_corpus.md")


def doc_steps():
    """``(files, commands)``: the code blocks marked ``<!-- file: PATH -->`` and ``<!-- run -->``."""
    with open(DOC) as f:
        text = f.read()
    files = dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, re.S))
    commands = []
    for block in re.findall(r"<!-- run -->\n```bash\n(.*?)```", text, re.S):
        commands += [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return files, commands


def write_flat_corpus(folder, speakers=8, utterances=4):
    """The layout of the walk-through: ``wav/<utterance>.wav`` and ``utt2spk``."""
    tones = write_tone_corpus(str(folder) + "_tones", speakers=speakers, utterances=utterances, seconds=0.6)
    os.makedirs(os.path.join(folder, "wav"))
    lines = []
    for s in range(speakers):
        for u in range(utterances):
            utterance = f"rec{s:02d}{u}"  # names that do not reveal the speaker
            wav, rate = sf.read(os.path.join(tones, f"spk{s}", "session", f"u{u}.wav"))
            sf.write(os.path.join(folder, "wav", utterance + ".wav"), wav, rate)
            lines.append(f"{utterance} speaker{s}\n")
    with open(os.path.join(folder, "utt2spk"), "w") as f:
        f.writelines(lines)


def test_the_new_corpus_walk_through_runs_as_written(tmp_path):
    files, commands = doc_steps()
    assert list(files) == ["recipes/MyCorpus/train.py"] and len(commands) == 3
    work = tmp_path / "work"
    os.makedirs(work / "recipes")
    os.symlink(os.path.join(ROOT, "recipes", "Demo"), work / "recipes" / "Demo")  # the yaml it starts from
    for path, text in files.items():
        os.makedirs(work / os.path.dirname(path), exist_ok=True)
        (work / path).write_text(text)
    corpus = tmp_path / "MyCorpus"
    write_flat_corpus(str(corpus))

    for command in commands:
        args = shlex.split(command.replace("/path/to/MyCorpus", str(corpus)))
        if args[0] == "python":  # the run: the tiny model and split of the smoke tests
            args = [sys.executable] + args[1:] + TINY_MODEL + TINY_PRETRAIN + [
                "--valid_per_speaker=1", "--test_per_speaker=1"]
            proc = subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=600)
        else:
            proc = subprocess.run(command, shell=True, cwd=work, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, command + "\n" + proc.stdout[-3000:] + proc.stderr[-3000:]

    out = work / "results" / "MyCorpus" / "lim_nce" / "1234"
    results = json.load(open(out / "results.json"))["systems"]
    rows = {name: row for name, row in results.items() if name.startswith("LIM (nce)")}
    assert len(rows) == 5  # one per back end of the Demo yaml: none, standardize, whiten, lda, plda
    for row in rows.values():
        assert 0.0 <= row["EER"] <= 1.0 and 0.0 <= row["sentence_error"] <= 1.0
    # 8 speakers: 4 held out for verification (4 x 4 utterances = 120 trials), 4 for speaker id.
    with open(out / "save" / "trials.txt") as f:
        assert len(f.readlines()) == 120
    with open(out / "save" / "test.csv") as f:
        assert len(f.readlines()) == 1 + 4
    # A second run of the same command skips what is finished and gives the same table.
    proc = subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.load(open(out / "results.json"))["systems"] == results
