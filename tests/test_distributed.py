"""Two processes on CPU (torchrun, gloo): the Demo recipe trains with DDP.

Checks that preparation runs once, that every log line and checkpoint is
written once, and that the evaluation gathered over both processes (each
scores half of the sentences and embeds half of the utterances) equals a
single-process evaluation of the same checkpoints.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY_MODEL, TINY_PRETRAIN, failure_report, write_tone_corpus


def demo_args(corpus, out, yaml="lim_nce.yaml"):
    return [
        os.path.join(ROOT, "recipes", "Demo", "train.py"),
        os.path.join(ROOT, "recipes", "Demo", "hparams", yaml),
        f"--output_folder={out}", f"--data_folder={corpus}", *TINY_MODEL, *TINY_PRETRAIN,
        "--num_verification_speakers=2", "--valid_per_speaker=1", "--test_per_speaker=1",
        "--score_baselines=False",
    ]


def two_process_demo(tmp_path, yaml="lim_nce.yaml"):
    """The tiny Demo run by torchrun in two processes (gloo): ``(process, corpus, output folder)``."""
    corpus = write_tone_corpus(str(tmp_path / "corpus"), speakers=6, utterances=4, seconds=0.6)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *demo_args(corpus, out, yaml), "--distributed_backend=gloo"]
    return subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=600), corpus, out


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
def test_two_processes_self_distil_under_torchrun(tmp_path):
    proc, _, out = two_process_demo(tmp_path, "dino.yaml")
    assert proc.returncode == 0, failure_report(proc)
    with open(out / "results.json") as f:
        assert "DINO" in json.load(f)["systems"]
    folder = out / "save" / "pretrain"
    state = torch.load(folder / [n for n in os.listdir(folder) if n.startswith("CKPT+")][0] / "objective.ckpt")
    assert state["center"].abs().sum() > 0 and any(key.startswith("teacher.head.") for key in state)


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
def test_two_process_ddp_training_equals_single_process_evaluation(tmp_path):
    proc, corpus, out = two_process_demo(tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, failure_report(proc)

    with open(out / "log.txt") as f:
        log = f.read()
    assert (log + output).count("sincmi.prepare.folder - Prepared") <= 1  # prepared once
    assert "Prepared" in log and "skipping preparation" not in log + output
    with open(out / "train_log.txt") as f:
        lines = f.read().splitlines()
    assert [line.split(" - ")[0] for line in lines] == [
        "stage: pretrain, epoch: 1, lr: 1.00e-03", "stage: speaker_id, epoch: 1", "stage: speaker_id"]
    for stage in ("pretrain", "speaker_id"):
        folders = [n for n in os.listdir(out / "save" / stage) if n.startswith("CKPT+")]
        assert len(folders) == 1, folders  # one best checkpoint, saved by one process
    assert not [n for n in os.listdir(out / "save" / "pretrain") if n.startswith(".partial")]

    with open(out / "results.json") as f:
        ddp = json.load(f)["systems"]["LIM (nce)"]
    # The same command in one process finds every stage finished and only evaluates.
    single = subprocess.run([sys.executable, *demo_args(corpus, out)], cwd=str(tmp_path), capture_output=True,
                            text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    assert "Going into epoch" not in single.stdout + single.stderr
    with open(out / "results.json") as f:
        one = json.load(f)["systems"]["LIM (nce)"]
    # Counts and error rates are equal; scores may differ in the last float32 bits
    # because the two runs batch the utterances differently.
    for key in ("sentences", "chunks", "sentence_error", "chunk_error", "target_trials", "nontarget_trials",
                "EER", "minDCF_0.01"):
        assert ddp[key] == one[key], key
    assert ddp["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert ddp["EER_threshold"] == pytest.approx(one["EER_threshold"], abs=1e-5)
    assert ddp["sentences"] == 4  # every test sentence counted once over the two processes



EXIT_SCRIPT = """
import atexit, logging, os, sys, time
import torch, torch.distributed as dist
from sincmi.distributed import run_recipe


def main(argv):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="rank %d %%(message)s at %%(created).3f" % rank)
    # atexit runs at the interpreter's shutdown, which a process that ended normally must skip.
    atexit.register(lambda: print("rank %d finalised at %.3f" % (rank, time.time()), flush=True))
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
    model(torch.randn(2, 4)).sum().backward()
    if os.environ.get("FAIL_RANK") == str(rank):  # while the other one gathers
        if os.environ.get("FAILURE") == "exit":
            sys.exit(3)
        raise RuntimeError("rank %d fails" % rank)
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, {"rank": rank})
    if rank == 0:
        time.sleep(1.0)  # the main process still writes its report
    print("rank %d done at %.3f" % (rank, time.time()))  # not flushed: leaving must flush it


run_recipe(main, sys.argv[1:])
"""


def run_exit_script(tmp_path, fail_rank="", failure="exception", processes=2):
    script = tmp_path / "exit_script.py"
    script.write_text(EXIT_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           str(script)]
    # A process waiting for others that never arrive would hang (gloo's timeout is 30 min).
    return subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, FAIL_RANK=str(fail_rank), FAILURE=failure))


def event_times(output, event):
    return {int(line.split()[1]): float(line.split()[-1]) for line in output.splitlines()
            if line.startswith("rank ") and f" {event}" in line}


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
def test_processes_leave_the_group_together_and_skip_the_interpreter_shutdown(tmp_path):
    # A process that exits while gloo's threads still release a collective's
    # tensors can abort (SIGABRT) after a successful run, in the interpreter's
    # shutdown. Each process waits at a barrier for the others (the main one
    # finishes a second later), then ends without that shutdown.
    proc = run_exit_script(tmp_path)
    assert proc.returncode == 0, failure_report(proc)
    done, left = event_times(proc.stdout, "done at"), event_times(proc.stdout, "Left the process group")
    assert sorted(done) == sorted(left) == [0, 1]  # output flushed before the early end
    assert done[1] < done[0]  # rank 1 finished its work first ...
    assert left[1] >= done[0]  # ... and left only once rank 0 had finished too
    assert "finalised" not in proc.stdout  # no interpreter shutdown


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
@pytest.mark.parametrize("processes, fail_rank, failure", [
    (1, 0, "exception"), (1, 0, "exit"), (2, 0, "exception"), (2, 1, "exception"), (2, 0, "exit"), (2, 1, "exit"),
])
def test_a_failing_process_fails_the_run_and_the_others_stop(tmp_path, processes, fail_rank, failure):
    # The failing rank does not wait for a barrier the others never reach; torchrun
    # stops the others (within the test's timeout, far below gloo's 30 minutes).
    proc = run_exit_script(tmp_path, fail_rank, failure, processes)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    if failure == "exception":
        assert f"rank {fail_rank} fails" in output
    assert fail_rank not in event_times(proc.stdout, "done at")
    assert fail_rank not in event_times(proc.stdout, "Left the process group")


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
@pytest.mark.parametrize("processes", [1, 2])
def test_a_failing_recipe_under_torchrun_exits_non_zero(tmp_path, processes):
    # A data folder holding no audio: the preparation fails on the main process.
    empty = tmp_path / "no_audio"
    (empty / "spk0").mkdir(parents=True)
    (empty / "spk0" / "notes.txt").write_text("not audio")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           *demo_args(empty, tmp_path / "out"), "--distributed_backend=gloo"]
    proc = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "ValueError" in output


RANK_STREAMS_SCRIPT = r'''
import os, sys, json
import torch, speechbrain as sb
from speechbrain.dataio.batch import PaddedBatch
from sincmi import data, distributed, stages
from sincmi.checkpoints import RandomState

torch.distributed.init_process_group("gloo")
rank = torch.distributed.get_rank()
sb.utils.seed_everything(1234)            # what every rank's yaml does
distributed.seed_this_process(1234)       # what stages.start_experiment then does
rows = data.load_manifest(sys.argv[1], sys.argv[2])
pairs = data.pair_dataset(rows, 3200)
out = {}
for workers in (0, 2):
    # The same sentences in the same order on both ranks: only the random draws can differ.
    loader = torch.utils.data.DataLoader(pairs, batch_size=4, num_workers=workers, collate_fn=PaddedBatch,
                                         generator=stages.loader_generator(1234))
    batch = next(iter(loader))
    out[f"workers{workers}"] = [batch.id, batch.anchor.data.sum(1).tolist()]
state = sys.argv[3] + "/random_state.pt"
if rank == 0:
    RandomState().save(state)              # a checkpoint holds the main process's generators only
torch.distributed.barrier()
RandomState().load(state)
out["after_load"] = torch.rand(3).tolist()
RandomState().load(state)
out["after_load_again"] = torch.rand(3).tolist()
with open(f"{sys.argv[3]}/rank{rank}.json", "w") as f:
    json.dump(out, f)
torch.distributed.barrier()
torch.distributed.destroy_process_group()
'''


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
def test_two_ranks_draw_different_chunks_at_the_same_batch_position(tmp_path):
    from sincmi.prepare.folder import prepare_folder

    corpus = write_tone_corpus(str(tmp_path / "corpus"), speakers=4, utterances=4, seconds=1.0)
    prepare_folder(corpus, str(tmp_path / "save"), num_verification_speakers=2, valid_per_speaker=1,
                   test_per_speaker=1)
    script = tmp_path / "streams.py"
    script.write_text(RANK_STREAMS_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path / "save" / "train.csv"), corpus, str(tmp_path)]
    proc = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, failure_report(proc)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for workers in ("workers0", "workers2"):
        (ids0, sums0), (ids1, sums1) = ranks[0][workers], ranks[1][workers]
        assert ids0 == ids1  # same sentences at the same positions...
        assert all(abs(a - b) > 1e-4 for a, b in zip(sums0, sums1)), (workers, sums0, sums1)  # ...other chunks
    # After loading the main process's generators, rank 1 still draws its own stream, reproducibly.
    assert ranks[0]["after_load"] != ranks[1]["after_load"]
    assert ranks[1]["after_load"] == ranks[1]["after_load_again"]
    assert ranks[0]["after_load"] == ranks[0]["after_load_again"]


def descendants(pid):
    """Every process below ``pid`` (Linux /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
def test_a_ddp_run_killed_inside_lim_resumes_exactly(tmp_path):
    """torchrun, 2 processes: kill -9 while LIM trains (checkpoints every step), run the same command again;
    the figures equal those of a run that was never interrupted, although each rank draws its own chunks."""
    import signal
    import time

    corpus = write_tone_corpus(str(tmp_path / "corpus"), speakers=6, utterances=4, seconds=0.6)

    def command(out):
        overrides = ["--pretrain_epochs=3", "--pairs_per_epoch=96", "--pretrain_batch_size=4",
                     "--ckpt_interval_minutes=0", "--ckpt_interval_steps=1"]
        keys = {a.split("=")[0] for a in overrides}
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                *[a for a in demo_args(corpus, out) if a.split("=")[0] not in keys], *overrides,
                "--distributed_backend=gloo"]

    def results(out):
        with open(out / "results.json") as f:
            return json.load(f)["systems"]["LIM (nce)"]

    uninterrupted = subprocess.run(command(tmp_path / "whole"), cwd=str(tmp_path), capture_output=True, text=True,
                                   timeout=600)
    assert uninterrupted.returncode == 0, failure_report(uninterrupted)
    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(command(resumed), cwd=str(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    folder, deadline = resumed / "save" / "pretrain", time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if folder.is_dir() and any(n.startswith("CKPT+") for n in os.listdir(folder)):
            for pid in [proc.pid, *descendants(proc.pid)]:  # torchrun and both ranks (their own groups)
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode != 0 and not (resumed / "save" / "speaker_id").exists(), "LIM ended before the kill"
    again = subprocess.run(command(resumed), cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, failure_report(again)
    assert "Loading a checkpoint from " + str(folder) in (resumed / "log.txt").read_text()
    assert results(resumed) == results(tmp_path / "whole")
    for stage in ("pretrain", "speaker_id"):  # the same weights, to the bit
        weights = [torch.load(next((out / "save" / stage).glob("CKPT+*/encoder.ckpt")), map_location="cpu")
                   for out in (resumed, tmp_path / "whole")]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), stage


@pytest.mark.parametrize("loader", ["persistent", "looped"])
def test_fit_ends_the_training_loaders_workers(tmp_path, loader):
    """After ``fit`` no training-loader worker is left alive: not left to the cycle collector (Brain and
    checkpointer refer to each other), where a later stage's loader would fork copies of it."""
    import multiprocessing

    from speechbrain.utils.checkpoints import Checkpointer

    from sincmi.brains import DistributedBrain

    class Tiny(DistributedBrain):
        def compute_forward(self, batch, stage):
            return self.modules.layer(batch)

        def compute_objectives(self, predictions, batch, stage):
            return predictions.pow(2).mean()

    dataset = torch.utils.data.TensorDataset(torch.randn(16, 3))
    kwargs = {"batch_size": 4, "num_workers": 1, "collate_fn": lambda items: torch.stack([x for (x,) in items])}
    kwargs.update({"persistent_workers": True} if loader == "persistent" else {"looped_nominal_epoch": 2})
    brain = Tiny(modules={"layer": torch.nn.Linear(3, 1)}, opt_class=lambda p: torch.optim.SGD(p, lr=0.1),
                 checkpointer=Checkpointer(str(tmp_path), {}))
    before = {p.pid for p in multiprocessing.active_children()}
    brain.fit(range(1, 3), dataset, train_loader_kwargs=kwargs)
    assert "dataloader-TRAIN" in brain.checkpointer.recoverables  # the loader the brain still holds ...
    assert {p.pid for p in multiprocessing.active_children()} <= before  # ... without its workers
