#!/usr/bin/env python3
"""Benchmarks of sincmi against the straightforward implementations, in one process.

Sections (``--sections``; the first four by default):

* ``step``: one LIM training step (128 sentence pairs = 256 chunks of 200 ms,
  SincNet's TIMIT encoder, MLP critic, InfoNCE over the batch, RMSprop):
  chunks/s and peak memory of the straightforward encoder (SpeechBrain's
  ``SincConv`` on a 2-D batch, ``nn.Conv1d``, ``F.max_pool1d``, LayerNorm,
  3 x FC 2048 + BatchNorm), of sincmi's ``implementation: reference`` and of
  sincmi's ``implementation: fast`` (the recipes' default), all with PyTorch's
  RMSprop (the recipes' optimiser); the fast
  encoder's outputs are compared with the reference's on the same weights.
* ``eval``: sentence-level evaluation, forward only: 200 ms chunks with a
  10 ms shift over 3 s sentences; SincNet's way (a Python loop cutting chunks,
  batches of 128 through the straightforward encoder) versus
  :func:`sincmi.encoder.utterance_embeddings` on the fast encoder.
* ``data``: the LIM training loader as the VoxCeleb yaml configures it, from
  files and from shards, FLAC and WAV, in pairs per worker CPU-second (see
  ``tools/scale_benchmark.py``); its last line is one JSON object with the keys
  ``files_flac``, ``shards_flac``, ``files_wav``, ``shards_wav``. With the step
  section, the worker cores each device's training step needs are printed.
* ``scoring``: EER + minDCF (p_target 0.01 and 0.05) by sorting, for 1 M and
  10 M trials, time and peak memory (peak RSS of the process, which includes
  the ~0.5 GiB of the imported libraries, and what the computation added);
  SpeechBrain's ``EER``/``minDCF`` on the sizes they can handle (their minDCF
  builds a thresholds x trials matrix, their EER loops over every threshold),
  with the memory the larger sizes would need.

The step and eval measurements are repeated ``--rounds`` times (3), the
variants interleaved, and the median is reported with the range (the speed of
a shared machine drifts). Each measurement runs in a child process so that its
peak memory (max RSS) is its own; on a GPU, peak memory is ``torch.cuda.max_memory_allocated``. CPU
runs use all the process's threads (2 on the CI machine). Prints tables and
writes JSON (``--out``).

Each step and eval row also reports the minor page faults per step (per chunk):
on a machine where they are expensive, fresh memory for large temporaries costs
the straightforward implementation a large share of its time. ``--allocator
keep`` runs the measurements with glibc's malloc keeping freed memory for
reuse, which removes most of them: compare both runs before reading a ratio.

* ``scale`` (not run by default, about 10 minutes on 2 cores): a generated
  corpus of ``--scale_files`` short files in VoxCeleb's layout through
  preparation, the manifest, shards, LIM steps, embedding and Vox1-E-size
  scoring, with each stage's time and peak memory (``tools/scale_benchmark.py``;
  ``docs/performance.md`` extrapolates it to the full corpora).
* ``profile`` (not run by default): where a CPU training step and a CPU
  evaluation spend their time, for the straightforward and the fast
  implementation: the ``--profile_top`` operators by ``torch.profiler`` self
  time, in ms per step (per evaluation of the 16 sentences); the native
  kernels appear as ``sincmi::...``.

Usage:
    python tools/benchmark.py --out benchmark.json
    python tools/benchmark.py --sections step eval --allocator keep --out benchmark_keep.json
    python tools/benchmark.py --sections profile --allocator keep --out profile.json
    python tools/benchmark.py --sections step eval --device cuda
    python tools/benchmark.py --sections data          # the loader, files against shards
    python tools/benchmark.py --sections scale         # every stage at simulated scale
    python tools/benchmark.py --sections step data --device cuda   # GPU step beside the loader
"""

import argparse
import io
import json
import multiprocessing
import os
import platform
import resource
import sys
import time

import numpy as np

import scale_benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# glibc malloc settings: serve large blocks from the heap and never return freed memory to the system.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(2**31), "MALLOC_TRIM_THRESHOLD_": str(2**40)}
TIMIT_ENCODER = dict(chunk_size=3200, sinc_filters=80, sinc_kernel=251, conv_channels=[60, 60],
                     conv_kernels=[5, 5], fc_sizes=[2048, 2048, 2048], norm_over="time")


def _peak_memory_mib(device):
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _seconds_per_call(fn, device, repeats):
    """Mean seconds and minor page faults of ``fn()`` after one warm-up call (GPU work included)."""
    import torch

    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / repeats
    return seconds, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / repeats


def _straightforward_encoder():
    """SincNet's TIMIT encoder written the plain way, on SpeechBrain's SincConv."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from speechbrain.nnet.CNN import SincConv

    class Block(nn.Module):
        def __init__(self, conv, channels, length, use_abs):
            super().__init__()
            self.conv, self.use_abs = conv, use_abs
            self.gain = nn.Parameter(torch.ones(channels, length))
            self.bias = nn.Parameter(torch.zeros(channels, length))

        def forward(self, x):
            if isinstance(self.conv, SincConv):
                x = self.conv(x).transpose(1, 2)  # SpeechBrain returns (batch, time, channels)
            else:
                x = self.conv(x)
            x = F.max_pool1d(x.abs() if self.use_abs else x, 3)
            x = F.layer_norm(x, x.shape[-1:]) * self.gain + self.bias
            return F.leaky_relu(x, 0.2)

    class Straightforward(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_norm = nn.LayerNorm(3200)
            self.blocks = nn.Sequential(
                Block(SincConv(80, 251, in_channels=1, padding="valid"), 80, 983, True),
                Block(nn.Conv1d(80, 60, 5), 60, 326, False),
                Block(nn.Conv1d(60, 60, 5), 60, 107, False),
            )
            layers, size = [], 60 * 107
            for _ in range(3):
                layers += [nn.Linear(size, 2048), nn.BatchNorm1d(2048, momentum=0.05), nn.LeakyReLU(0.2)]
                size = 2048
            self.fc = nn.Sequential(*layers)

        def forward(self, chunks):
            return self.fc(self.blocks(self.input_norm(chunks)).flatten(1))

    return Straightforward()


def _encoder(kind):
    if kind == "straightforward":
        return _straightforward_encoder()
    from sincmi.encoder import SincNetEncoder

    return SincNetEncoder(**TIMIT_ENCODER, implementation=kind)


def _step_fn(kind, device, pairs=128, amp=False):
    """One LIM step (encoder + MLP critic + InfoNCE + RMSprop) as a callable, and its chunks."""
    import torch
    from sincmi.discriminator import MLPDiscriminator
    from sincmi.objectives import InfoNCE
    from sincmi.pairs import pair_logits

    torch.manual_seed(0)
    encoder = _encoder(kind).to(device)
    critic = MLPDiscriminator(2048, hidden_size=1024).to(device)
    objective = InfoNCE()
    params = list(encoder.parameters()) + list(critic.parameters())
    optimizer = torch.optim.RMSprop(params, lr=1e-3, alpha=0.95, eps=1e-8)  # the recipes' (SincNet's)
    chunks = torch.randn(2 * pairs, 3200, device=device)
    sentences = list(range(pairs))

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            z = encoder(chunks)
            anchors, positives = z.float().split(pairs)
            pos, neg, valid = pair_logits(critic, anchors, positives, sentences)
        loss = objective(pos.float(), neg.float(), valid)
        loss.backward()
        optimizer.step()
        return loss

    return step, 2 * pairs


def _measure_step(kind, device, pairs=128, repeats=5, amp=False):
    """Chunks/s of one LIM step (encoder + MLP critic + InfoNCE + RMSprop)."""
    step, chunks = _step_fn(kind, device, pairs, amp)
    step()  # warm-up (allocator, oneDNN/cuDNN kernel choice)
    seconds, faults = _seconds_per_call(step, device, repeats)
    return {"seconds_per_step": seconds, "chunks_per_s": chunks / seconds,
            "page_faults_per_step": faults, "peak_mib": _peak_memory_mib(device)}


def _compare_outputs(device):
    """Fast vs reference encoder on the same weights: outputs and gradients."""
    import torch

    torch.manual_seed(0)
    ref, fast = _encoder("reference").to(device), _encoder("fast").to(device)
    fast.load_state_dict(ref.state_dict())
    chunks = torch.randn(64, 3200, device=device)
    outs = []
    for model in (ref, fast):
        out = model(chunks)
        out.square().mean().backward()
        outs.append((out.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (o1, g1), (o2, g2) = outs
    return {"output_rel_diff": float((o1 - o2).norm() / o1.norm()),
            "gradient_rel_diff": float((g1 - g2).norm() / g1.norm())}


def _eval_fn(kind, device, sentences=16, seconds=3.0):
    """Sentence-level evaluation (200 ms chunks, 10 ms shift) as a callable, and its chunks."""
    import torch
    from sincmi.encoder import utterance_embeddings

    torch.manual_seed(0)
    encoder = _encoder("straightforward" if kind == "straightforward" else "fast").to(device).eval()
    wavs = torch.randn(sentences, int(seconds * 16000), device=device)
    shift, size = 160, 3200
    n_chunks = sentences * ((wavs.shape[1] - size) // shift + 1)

    @torch.no_grad()
    def run():
        if kind == "straightforward":  # SincNet's test loop: cut chunk by chunk, batches of 128
            out = []
            for wav in wavs:
                cut = [wav[s : s + size] for s in range(0, wav.shape[0] - size + 1, shift)]
                emb = torch.cat([encoder(torch.stack(cut[i : i + 128])) for i in range(0, len(cut), 128)])
                out.append(torch.nn.functional.normalize(emb, dim=-1).mean(0))
            return torch.stack(out)
        return utterance_embeddings(encoder, wavs, None, size, shift, max_chunks=256)

    return run, n_chunks


def _measure_eval(kind, device, sentences=16, seconds=3.0, repeats=3):
    """Chunks/s of sentence-level evaluation (200 ms chunks, 10 ms shift)."""
    run, n_chunks = _eval_fn(kind, device, sentences, seconds)
    elapsed, faults = _seconds_per_call(run, device, repeats)
    return {"chunks": n_chunks, "chunks_per_s": n_chunks / elapsed, "page_faults_per_chunk": faults / n_chunks,
            "peak_mib": _peak_memory_mib(device)}


def _profile(section, kind, top, calls=2):
    """Where a CPU step (or evaluation) spends its time: the ``top`` operators by self time.

    Rows: operator (the native kernels appear as ``sincmi::...``), milliseconds
    per call (a step, or one evaluation of all sentences), share of the total.
    """
    from torch.profiler import ProfilerActivity, profile

    fn, _ = (_step_fn if section == "step" else _eval_fn)(kind, "cpu")
    fn()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"operator": e.key, "ms_per_call": e.self_cpu_time_total / 1000 / calls,
             "share": e.self_cpu_time_total / total, "calls": e.count / calls} for e in events[:top]]


def _rounds(measure, variants, rounds):
    """Measures every variant once per round, interleaved, and keeps each one's median round.

    On a shared machine the speed drifts between minutes; interleaving puts
    every variant through the same conditions, and each row reports the
    median chunks/s with the range over the rounds.
    """
    runs = {name: [] for name, _ in variants}
    for _ in range(rounds):
        for name, args in variants:
            runs[name].append(_in_child(measure, *args))
    rows = []
    for name, results in runs.items():
        results = sorted(results, key=lambda r: r["chunks_per_s"])  # runs keeps the round order
        row = dict(results[len(results) // 2])
        row["chunks_per_s_range"] = [results[0]["chunks_per_s"], results[-1]["chunks_per_s"]]
        rows.append({"implementation": name, **row})
    return rows, runs


def _speedups(rows, runs, base):
    """Median ratio over the rounds (each round's variant against the same round's base)."""
    for row in rows:
        ratios = sorted(a["chunks_per_s"] / b["chunks_per_s"] for a, b in zip(runs[row["implementation"]], runs[base]))
        row["speedup"] = ratios[len(ratios) // 2]
        row["speedup_range"] = [ratios[0], ratios[-1]]


def _compare_on_devices(measure, devices, rounds, kinds, extra=lambda device: []):
    """Rows of ``measure`` for each kind (and ``extra(device)`` variants), with speedups over the first."""
    rows = []
    for device in devices:
        variants = [(kind, (kind, device)) for kind in kinds] + extra(device)
        device_rows, runs = _rounds(measure, variants, rounds)
        _speedups(device_rows, runs, kinds[0])
        rows += [{"device": device, **row} for row in device_rows]
    return rows


def step_section(devices, amp, rounds):
    def bf16(device):
        return [("fast + bf16 autocast", ("fast", device, 128, 5, True))] if amp and device.startswith("cuda") else []

    return _compare_on_devices(_measure_step, devices, rounds, ("straightforward", "reference", "fast"), bf16)


def eval_section(devices, rounds):
    return _compare_on_devices(_measure_eval, devices, rounds, ("straightforward", "fast"))


def profile_section(sections, top):
    """``{section: {implementation: rows}}`` of :func:`_profile`, printed side by side."""
    results = {}
    for section in sections:
        results[section] = {kind: _in_child(_profile, section, kind, top) for kind in ("straightforward", "fast")}
        unit = "step" if section == "step" else "evaluation"
        print(f"== Where a CPU {unit} spends its time (self time, ms per {unit}) ==")
        for kind, rows in results[section].items():
            print(f"-- {kind}")
            print_rows(rows, [("operator", str, 40), ("ms_per_call", _f(1), 11), ("share", _percent, 6),
                              ("calls", _f(0), 6)])
    return results


def _random_scores(n_trials, seed=0):
    rng = np.random.default_rng(seed)
    n_target = max(1, n_trials // 100)  # VoxCeleb1-E/H-like ratio
    pos = rng.normal(1.5, 1.0, n_target).astype(np.float32)
    neg = rng.normal(0.0, 1.0, n_trials - n_target).astype(np.float32)
    return pos, neg


def _measure(implementation, n_trials):
    """EER + minDCF (0.01, 0.05) of random scores: seconds and peak memory."""
    # sincmi's minDCF is normalised, SpeechBrain's is not: compare EERs, and times.
    if implementation == "sincmi":
        from sincmi.metrics import verification_metrics

        pos, neg = _random_scores(n_trials)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        metrics = verification_metrics(pos, neg, p_targets=(0.01, 0.05))  # one sort for all three
        seconds = time.perf_counter() - start
        value, dcf = metrics["EER"], [metrics["minDCF_0.01"], metrics["minDCF_0.05"]]
    else:
        import torch
        from speechbrain.utils.metric_stats import EER, minDCF

        pos, neg = (torch.from_numpy(x) for x in _random_scores(n_trials))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        value = EER(pos, neg)[0]
        dcf = [minDCF(pos, neg, p_target=p)[0] for p in (0.01, 0.05)]
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_rss_mib": peak / 1024, "extra_rss_mib": (peak - base) / 1024,
            "EER": value, "minDCF": dcf}


def _child_main(connection, fn, args):
    try:
        connection.send(("ok", fn(*args)))
    except BaseException as error:  # reported in the parent
        connection.send(("error", repr(error)))


def _in_child(fn, *args):
    """Runs ``fn(*args)`` in a fresh (non-daemon: it may start loader workers) process."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_child_main, args=(child, fn, args))
    process.start()
    status, value = parent.recv()
    process.join()
    if status != "ok":
        raise RuntimeError(f"{fn.__name__}{args} failed in its child process: {value}")
    return value


def scoring_section(sizes, speechbrain_sizes):
    rows = []
    for n in sorted(set(sizes) | set(speechbrain_sizes)):
        rows.append({"implementation": "sincmi (sort)", "trials": n, **_in_child(_measure, "sincmi", n)})
    for n in speechbrain_sizes:
        rows.append({"implementation": "speechbrain", "trials": n, **_in_child(_measure, "speechbrain", n)})
    # SpeechBrain's minDCF copies the scores once per threshold: ~2n thresholds
    # (scores and midpoints) x n trials in float32, 8 n^2 bytes before its boolean masks.
    for n in sizes:
        if n not in speechbrain_sizes:
            need_gib = 8 * n * n / 2**30
            rows.append({"implementation": "speechbrain", "trials": n, "seconds": None,
                         "note": f"not run: minDCF would allocate at least {need_gib:,.0f} GiB"})
    return rows


def print_table(rows):
    print(f"{'implementation':<16}{'trials':>12}{'seconds':>10}{'peak MiB':>10}{'added MiB':>11}{'EER %':>9}  note")
    for r in rows:
        seconds = f"{r['seconds']:.3f}" if r.get("seconds") is not None else "-"
        peak = f"{r['peak_rss_mib']:.0f}" if "peak_rss_mib" in r else "-"
        extra = f"{r['extra_rss_mib']:.0f}" if "extra_rss_mib" in r else "-"
        value = f"{100 * r['EER']:.3f}" if "EER" in r else "-"
        print(f"{r['implementation']:<16}{r['trials']:>12,}{seconds:>10}{peak:>10}{extra:>11}{value:>9}  {r.get('note', '')}")


def print_rows(rows, columns):
    """Prints ``rows`` under ``columns`` = [(key, format, width), ...]."""
    print("  ".join(f"{key:>{width}}" for key, _, width in columns))
    for row in rows:
        cells = [fmt(row[key]) if row.get(key) is not None else "-" for key, fmt, _ in columns]
        print("  ".join(f"{cell:>{width}}" for cell, (_, _, width) in zip(cells, columns)))


def _f(digits):
    return lambda value: f"{value:.{digits}f}"


def _percent(value):
    return f"{100 * value:.1f}%"


def _range(digits):
    return lambda pair: f"{pair[0]:.{digits}f}-{pair[1]:.{digits}f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sections = ["step", "eval", "data", "scoring"]
    parser.add_argument("--sections", nargs="+", default=sections, choices=sections + ["profile", "scale"])
    parser.add_argument("--device", nargs="+", default=None,
                        help="devices for step/eval (default: cpu, and cuda when present)")
    parser.add_argument("--no_amp", action="store_true", help="skip the bf16 autocast row on GPU")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved repetitions of the step and eval measurements (median reported)")
    parser.add_argument("--data_files", type=int, default=400, help="8 s files of the data section's corpus")
    parser.add_argument("--scale_files", type=int, default=20000, help="training files of the scale section")
    parser.add_argument("--trials", nargs="+", type=int, default=[1_000_000, 10_000_000])
    parser.add_argument("--speechbrain_trials", nargs="+", type=int, default=[2_000, 10_000])
    parser.add_argument("--allocator", choices=["default", "keep"], default="default",
                        help="glibc malloc in the measuring processes: its defaults, or 'keep' (freed "
                             "memory kept for reuse, MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_), "
                             "under which large temporary tensors stop costing page faults")
    parser.add_argument("--profile_top", type=int, default=12,
                        help="operators listed per implementation by the profile section")
    parser.add_argument("--out", default="benchmark.json")
    parser.add_argument("--markdown", help="also write the printed tables to this Markdown file "
                                           "(docs/benchmark.md holds the latest run)")
    args = parser.parse_args(argv)
    if args.markdown:
        command = "python tools/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
        with Tee() as printed:
            run_sections(args)
        with open(args.markdown, "w") as f:
            f.write(f"# Benchmark: the latest run\n\nWritten by `{command}` "
                    "(see docs/performance.md for what each section measures).\n\n```\n"
                    f"{printed.getvalue().strip()}\n```\n")
        print(f"written {args.markdown}")
    else:
        run_sections(args)


class Tee(io.StringIO):
    """Copies what is printed inside the ``with`` block into itself, still printing it."""

    def __enter__(self):
        self._stdout, sys.stdout = sys.stdout, self
        return self

    def __exit__(self, *exc):
        sys.stdout = self._stdout

    def write(self, text):
        self._stdout.write(text)
        return super().write(text)


def run_sections(args):
    if args.allocator == "keep":  # read by glibc when each child process starts
        os.environ.update(KEEP_FREED_MEMORY)

    import torch

    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    results = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine(),
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                    "python": sys.version.split()[0], "torch": torch.__version__,
                    "allocator": args.allocator},
    }
    print(json.dumps(results["machine"]))
    if "step" in args.sections:
        print("== LIM training step, 128 pairs (256 chunks of 3200 samples) ==")
        rows = step_section(devices, not args.no_amp, args.rounds)
        print_rows(rows, [("device", str, 6), ("implementation", str, 22), ("chunks_per_s", _f(0), 12),
                          ("chunks_per_s_range", _range(0), 12), ("speedup", _f(2), 8), ("speedup_range", _range(2), 12),
                          ("page_faults_per_step", _f(0), 20), ("peak_mib", _f(0), 9)])
        results["step"] = rows
        results["fast_vs_reference"] = {d: _in_child(_compare_outputs, d) for d in devices}
        print("fast vs reference encoder, same weights (relative L2 difference):",
              json.dumps(results["fast_vs_reference"]))
    if "eval" in args.sections:
        print("== Sentence evaluation, forward only (200 ms chunks, 10 ms shift) ==")
        rows = eval_section(devices, args.rounds)
        print_rows(rows, [("device", str, 6), ("implementation", str, 16), ("chunks_per_s", _f(0), 12),
                          ("chunks_per_s_range", _range(0), 12), ("speedup", _f(2), 8), ("speedup_range", _range(2), 12),
                          ("page_faults_per_chunk", _f(1), 21), ("peak_mib", _f(0), 9)])
        results["eval"] = rows
    if "profile" in args.sections:
        results["profile"] = profile_section(("step", "eval"), args.profile_top)
    if "data" in args.sections:
        print("== LIM training loader as the VoxCeleb yaml configures it: pairs per worker CPU-second ==")
        data = scale_benchmark.data_section(_in_child, args.data_files, args.rounds)
        scale_benchmark.print_data(data)
        for row in results.get("step", []):
            if row["implementation"] == "fast":  # what this device's training step consumes
                pairs = row["chunks_per_s"] / 2
                cores = {k: pairs / data["summary"][k] for k in ("files_flac", "shards_flac")}
                print(f"{row['device']}: the fast step takes {pairs:,.0f} pairs/s: "
                      f"{cores['files_flac']:.2f} worker cores from FLAC files, {cores['shards_flac']:.2f} from shards")
        results["data"] = data
        print(json.dumps(data["summary"]))
    if "scale" in args.sections:
        print(f"== Every stage at simulated scale: {args.scale_files:,} files in VoxCeleb's layout ==")
        results["scale"] = scale_benchmark.scale_section(_in_child, args.scale_files)
        scale_benchmark.print_scale(results["scale"])
    if "scoring" in args.sections:
        print("== EER + minDCF (p_target 0.01 and 0.05) ==")
        rows = scoring_section(args.trials, args.speechbrain_trials)
        print_table(rows)
        results["scoring"] = rows
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"written {args.out}")
    if "data" in results:  # the last line: the loader's figures, one JSON object
        print(json.dumps(results["data"]["summary"]))


if __name__ == "__main__":
    main()
