"""The large-corpus measurements of ``tools/benchmark.py``: the ``data`` and ``scale`` sections.

* ``data``: the LIM training loader as the VoxCeleb yaml configures it (chunk
  size, batch, ``pairs_per_segment``, ``shuffle_buffer``, 3 s segments), on a
  corpus it writes (``--data_files`` files of 8 s, FLAC and WAV: real speech
  from ``../shared/data`` cut to 8 s where it is present, else generated
  noise; and AAC ``.m4a``), read from the files (:func:`sincmi.data.pair_dataset`: two partial
  reads per pair) and from shards (:class:`sincmi.shards.ShardPairs`), in
  pairs per CPU-second of one loader worker (one process, one thread, the
  batches collated as the loader's workers do; the shard stream measured once
  its shuffle buffer is full, as during training).
* ``scale``: a generated corpus in VoxCeleb's layout (``--scale_files``
  training files, a quarter of them AAC ``.m4a`` as VoxCeleb2 is distributed,
  and 400 trial utterances) through every stage: preparation (parallel header
  reads), the training manifest as a table, packing shards, LIM steps reading
  the shards through loader workers, embedding the trial utterances with loader
  workers, and ``python -m sincmi score`` at VoxCeleb1-E's size (145,160
  embeddings of 2,048 dims, 579,818 trials). Each stage runs in its own
  process: wall time, CPU time and peak resident memory.
"""

import csv
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_SPEECH = os.path.join(ROOT, "..", "shared", "data", "LibriSpeech_100speakers")
VOXCELEB_YAML = os.path.join(ROOT, "recipes", "VoxCeleb", "hparams", "lim_nce.yaml")
RATE = 16000
FORMATS = ("flac", "wav", "m4a")  # m4a: AAC, as VoxCeleb2 is distributed


def voxceleb_loader_settings():
    """The LIM loader's settings of the VoxCeleb yaml (its plain values)."""
    import ruamel.yaml

    with open(VOXCELEB_YAML) as f:
        tree = ruamel.yaml.YAML(typ="safe", pure=True)
        tree.constructor.add_multi_constructor("!", lambda loader, suffix, node: None)
        values = tree.load(f)
    keys = ("chunk_size", "pretrain_batch_size", "pairs_per_segment", "shuffle_buffer", "segment_seconds",
            "random_gain", "min_pair_distance", "num_workers")
    return {key: values.get(key) for key in keys}


def speech_source(seconds_needed):
    """One long float32 waveform: the real readers of ../shared/data when present, else shaped noise."""
    import soundfile as sf

    files = sorted(glob.glob(os.path.join(SHARED_SPEECH, "**", "*.flac"), recursive=True))
    if files:
        return np.concatenate([sf.read(f, dtype="float32")[0] for f in files]), "LibriSpeech_100speakers"
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(int(seconds_needed * RATE)).astype(np.float32)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * np.arange(noise.size) / RATE)
    return (0.1 * np.convolve(noise, np.ones(8) / 8, mode="same") * envelope).astype(np.float32), "generated noise"


def write_loader_corpus(folder, files=400, seconds=8.0, segment_seconds=3.0):
    """``files`` recordings of ``seconds`` in each of :data:`FORMATS`, and a manifest of ``segment_seconds`` segments."""
    import soundfile as sf

    source, origin = speech_source(files * seconds)
    length = int(seconds * RATE)
    segment = int(segment_seconds * RATE)
    from sincmi.audio import write_aac

    manifests = {}
    for fmt in FORMATS:
        os.makedirs(os.path.join(folder, fmt), exist_ok=True)
        rows = []
        for i in range(files):
            start = (i * length + (i // 7) * 1234) % (len(source) - length)
            name = f"spk{i % 40:03d}_{i:05d}.{fmt}"
            if fmt == "m4a":
                write_aac(os.path.join(folder, fmt, name), source[start : start + length], RATE)
            else:
                sf.write(os.path.join(folder, fmt, name), source[start : start + length], RATE, subtype="PCM_16")
            for k, first in enumerate(range(0, length, segment)):
                last = min(first + segment, length)
                if last - first < 3200:
                    break
                rows.append({"ID": f"{name[:-len(fmt) - 1]}_{k}", "duration": (last - first) / RATE,
                             "wav": f"$data_root/{name}", "start": first, "stop": last,
                             "spk_id": f"spk{i % 40:03d}", "gain": 1.0, "sentence": name[: -len(fmt) - 1]})
        manifests[fmt] = os.path.join(folder, f"{fmt}.csv")
        with open(manifests[fmt], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return manifests, origin


def _fork_workers():
    """Loader workers forked, as the recipes' are on Linux (this child process was spawned)."""
    import multiprocessing

    multiprocessing.set_start_method("fork", force=True)


def _one_thread():
    import torch

    torch.set_num_threads(1)


def measure_files(manifest, data_root, settings, batches=40):
    """Pairs per CPU-second of the per-file loader (two partial reads per pair), collated in batches
    of segments drawn at random (with replacement: more batches than the corpus has segments)."""
    _one_thread()
    import torch
    from speechbrain.dataio.batch import PaddedBatch
    from sincmi.data import load_manifest, pair_dataset

    torch.manual_seed(0)
    rows = load_manifest(manifest, data_root)
    dataset = pair_dataset(rows, settings["chunk_size"], settings["random_gain"],
                           min_pair_distance=settings["min_pair_distance"] or 0)
    size = settings["pretrain_batch_size"]
    order = torch.randint(0, len(dataset), ((batches + 1) * size,)).tolist()
    PaddedBatch([dataset[i] for i in order[:size]])  # warm-up
    start = time.process_time()
    for b in range(1, batches + 1):
        PaddedBatch([dataset[i] for i in order[b * size : (b + 1) * size]])
    return {"pairs_per_cpu_s": batches * size / (time.process_time() - start), "pairs": batches * size}


def measure_shards(manifest, data_root, settings, folder, batches=60):
    """Packs ``manifest`` (timed), then pairs per CPU-second of the shard stream once its buffer is full."""
    _one_thread()
    import itertools

    from speechbrain.dataio.batch import PaddedBatch
    from sincmi.shards import ShardPairs, pack_shards

    start = time.perf_counter()
    index = pack_shards(manifest, folder, data_root, files_per_shard=50, jobs=2, progress=False)
    packing = time.perf_counter() - start
    stream = iter(ShardPairs(folder, settings["chunk_size"], seed=0, pairs_per_segment=settings["pairs_per_segment"],
                             shuffle_buffer=settings["shuffle_buffer"], gain_range=settings["random_gain"],
                             min_pair_distance=settings["min_pair_distance"] or 0))
    size = settings["pretrain_batch_size"]
    for _ in range(settings["shuffle_buffer"] // size + 1):  # fill the shuffle buffer, as a run does once
        PaddedBatch(list(itertools.islice(stream, size)))
    start = time.process_time()
    for _ in range(batches):
        PaddedBatch(list(itertools.islice(stream, size)))
    return {"pairs_per_cpu_s": batches * size / (time.process_time() - start), "pairs": batches * size,
            "packing_s": packing, "shards": len(index["shards"]),
            "shard_mib": sum(os.path.getsize(os.path.join(folder, s["name"])) for s in index["shards"]) / 2**20}


def data_section(in_child, files=400, rounds=3):
    """``{files_flac, shards_flac, files_wav, shards_wav, ...}``: median pairs per worker CPU-second over
    ``rounds`` interleaved rounds (each measurement in a fresh process), with the rows of every round."""
    settings = voxceleb_loader_settings()
    with tempfile.TemporaryDirectory() as folder:
        manifests, origin = write_loader_corpus(folder, files, 8.0, settings["segment_seconds"])
        rows = []
        for round_ in range(rounds):
            for fmt in FORMATS:
                root = os.path.join(folder, fmt)
                shards = os.path.join(folder, f"shards_{fmt}_{round_}")
                for reader, result in (
                    ("files", in_child(measure_files, manifests[fmt], root, settings)),
                    ("shards", in_child(measure_shards, manifests[fmt], root, settings, shards)),
                ):
                    rows.append({"round": round_, "format": fmt, "reader": reader, **result})
    summary, ranges = {}, {}
    for fmt in FORMATS:
        for reader in ("files", "shards"):
            values = sorted(r["pairs_per_cpu_s"] for r in rows if r["format"] == fmt and r["reader"] == reader)
            summary[f"{reader}_{fmt}"] = round(values[len(values) // 2], 1)
            ranges[f"{reader}_{fmt}"] = [round(values[0], 1), round(values[-1], 1)]
        ratios = sorted(s["pairs_per_cpu_s"] / f["pairs_per_cpu_s"] for f, s in zip(
            [r for r in rows if r["format"] == fmt and r["reader"] == "files"],
            [r for r in rows if r["format"] == fmt and r["reader"] == "shards"]))
        summary[f"ratio_{fmt}"] = round(ratios[len(ratios) // 2], 2)
        ranges[f"ratio_{fmt}"] = [round(ratios[0], 2), round(ratios[-1], 2)]
    return {"settings": settings, "corpus": f"{files} files of 8 s ({origin})", "rows": rows, "summary": summary,
            "ranges": ranges}


# ---------------------------------------------------------------------------------------------------------------
# The scale section: a generated corpus in VoxCeleb's layout through every stage.

def write_voxceleb_corpus(folder, files=20000, seconds=1.5, aac_share=0.25, trial_speakers=40, trial_utts=10):
    """VoxCeleb1 (``wav/``, trial speakers + trial list) and VoxCeleb2 (``<spk>/<video>/<utt>.m4a`` or .wav)."""
    import soundfile as sf

    from sincmi.audio import write_aac

    rng = np.random.default_rng(0)
    length = int(seconds * RATE)
    base = (0.1 * np.convolve(rng.standard_normal(length + 7919), np.ones(8) / 8, mode="same")).astype(np.float32)
    vox1 = os.path.join(folder, "VoxCeleb1")
    trial_files = []
    for s in range(trial_speakers):
        for u in range(trial_utts):
            rel = f"id9{s:04d}/video{u % 2}/{u:05d}.wav"
            os.makedirs(os.path.join(vox1, "wav", os.path.dirname(rel)), exist_ok=True)
            sf.write(os.path.join(vox1, "wav", rel), base[s * 97 + u : s * 97 + u + length], RATE, subtype="PCM_16")
            trial_files.append(rel)
    with open(os.path.join(vox1, "veri_test2.txt"), "w") as f:
        for i, a in enumerate(trial_files):
            for b in trial_files[i + 1 : i + 6]:
                f.write(f"{int(a.split('/')[0] == b.split('/')[0])} {a} {b}\n")
    vox2 = os.path.join(folder, "VoxCeleb2", "aac")
    speakers = max(2, files // 40)
    aac_every = round(1 / aac_share) if aac_share else 0
    for i in range(files):
        spk, video = f"id0{i % speakers:05d}", f"video{(i // speakers) % 4}"
        ext = "m4a" if aac_every and i % aac_every == 0 else "wav"
        path = os.path.join(vox2, spk, video, f"{i:06d}.{ext}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        wav = base[i % 7000 : i % 7000 + length]
        if ext == "m4a":
            write_aac(path, wav, RATE)
        else:
            sf.write(path, wav, RATE, subtype="PCM_16")
    return vox1, vox2


def _cpu_seconds():
    """CPU time of this process and of the worker processes it has waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Usage:
    """What a stage used: CPU seconds (its workers' included) and peak memory, from its start.

    ``peak_mib`` is the process's peak resident memory (the imported libraries
    included, about 500 MiB), ``added_mib`` what the stage added to it.
    """

    def __init__(self):
        self.cpu = _cpu_seconds()
        self.rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def __call__(self):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"cpu_s": _cpu_seconds() - self.cpu, "peak_mib": peak / 1024, "added_mib": (peak - self.rss) / 1024}


def stage_prepare(vox1, vox2, save):
    from sincmi.prepare.voxceleb import prepare_voxceleb

    usage, start = Usage(), time.perf_counter()
    prepare_voxceleb(vox1, save, voxceleb2_folder=vox2, train_sets=["voxceleb2"], segment_seconds=3.0,
                     valid_speakers=20, verify_samples=False, prepare_jobs=2)
    with open(os.path.join(save, "train.csv")) as f:
        rows = sum(1 for _ in f) - 1
    wall = time.perf_counter() - start
    return {"wall_s": wall, "rows": rows, "files_per_s": rows / wall, **usage()}


def write_million_row_manifest(path, rows=1_000_000, segments_per_file=3):
    """A VoxCeleb2-like training manifest of ``rows`` segments (no audio: the manifest alone is measured)."""
    with open(path, "w") as f:
        f.write("ID,duration,wav,start,stop,spk_id,gain,sentence\n")
        for i in range(rows):
            file, k = divmod(i, segments_per_file)
            spk = f"id{file % 5994:05d}"
            utt = f"{spk}-v{file // 5994:07d}-{file % 1000:05d}"
            f.write(f"{utt}_{k},3.0,$voxceleb2/{spk}/v{file // 5994:07d}/{file % 1000:05d}.m4a,"
                    f"{48000 * k},{48000 * (k + 1)},{spk},1.0,{utt}\n")
    return path


def _private_dirty_mib():
    """This process's private dirty memory (pages it wrote or copied), from /proc/self/smaps_rollup."""
    with open("/proc/self/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith("Private_Dirty")) / 1024


def _resident_mib():
    """This process's resident memory now."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def _touch_rows(rows, kind, connection):
    """In a forked loader-like worker: read every row as the training datasets do; report the growth."""
    before = _private_dirty_mib()
    total = 0
    if kind == "table":
        for i in range(len(rows)):
            total += len(rows.text("wav", i)) + int(rows.numbers["stop"][i]) - int(rows.numbers["start"][i])
    else:
        for key in rows.data_ids:
            row = rows.data[key]
            total += len(row["wav"]) + int(row["stop"]) - int(row["start"])
    connection.send(_private_dirty_mib() - before)


def stage_manifest(path, kind):
    """A manifest as a table (``load_manifest``) or as SpeechBrain's dict per row (``DynamicItemDataset``):
    load time, memory added, and what a forked worker copies by reading every row once."""
    import multiprocessing

    from speechbrain.dataio.dataset import DynamicItemDataset

    from sincmi.data import load_manifest

    usage, start = Usage(), time.perf_counter()
    if kind == "table":
        rows = load_manifest(path, {"voxceleb2": "/data/VoxCeleb2"})
    else:
        rows = DynamicItemDataset.from_csv(path, replacements={"voxceleb2": "/data/VoxCeleb2"})
    wall = time.perf_counter() - start
    loaded = {**usage(), "held_mib": _resident_mib() - usage.rss / 1024}
    if kind == "table":
        loaded["table_mib"] = rows.nbytes() / 2**20
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    worker = context.Process(target=_touch_rows, args=(rows, kind, child))
    worker.start()
    growth = parent.recv()
    worker.join()
    return {"wall_s": wall, "rows": len(rows), **loaded, "worker_copied_mib": growth}


def stage_shards(save, roots, out):
    from sincmi.shards import pack_shards

    usage, start = Usage(), time.perf_counter()
    index = pack_shards(os.path.join(save, "train.csv"), out, roots, files_per_shard=500, jobs=2, progress=False)
    wall = time.perf_counter() - start
    size = sum(os.path.getsize(os.path.join(out, s["name"])) for s in index["shards"])
    return {"wall_s": wall, "shards": len(index["shards"]), "files": index["files"], "files_per_s": index["files"] / wall,
            "mib": size / 2**20, **usage()}


def stage_lim_steps(shards, steps=6, workers=2, batch=128):
    """LIM steps on the VoxCeleb encoder (SincNet, fast CPU implementation) reading shards through workers."""
    import torch
    from speechbrain.dataio.batch import PaddedBatch

    from sincmi.discriminator import MLPDiscriminator
    from sincmi.encoder import SincNetEncoder
    from sincmi.objectives import InfoNCE
    from sincmi.pairs import pair_logits
    from sincmi.shards import ShardPairs

    _fork_workers()
    torch.manual_seed(0)
    encoder = SincNetEncoder(chunk_size=3200, sinc_filters=80, sinc_kernel=251, conv_channels=[60, 60],
                             conv_kernels=[5, 5], fc_sizes=[2048, 2048, 2048])
    critic, objective = MLPDiscriminator(2048, hidden_size=256), InfoNCE()
    optimizer = torch.optim.RMSprop(list(encoder.parameters()) + list(critic.parameters()), lr=1e-3)
    stream = ShardPairs(shards, 3200, seed=0, pairs_per_segment=8, shuffle_buffer=1024)
    loader = torch.utils.data.DataLoader(stream, batch_size=batch, num_workers=workers, collate_fn=PaddedBatch)
    usage = Usage()
    start, waiting, computing = time.perf_counter(), 0.0, 0.0
    batches = iter(loader)
    for _ in range(steps):
        t0 = time.perf_counter()
        pairs = next(batches)
        t1 = time.perf_counter()
        z = encoder(torch.cat([pairs.anchor.data, pairs.positive.data]))
        loss = objective(*pair_logits(critic, *z.split(len(pairs.id)), pairs.sentence))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        waiting, computing = waiting + t1 - t0, computing + time.perf_counter() - t1
    return {"wall_s": time.perf_counter() - start, "steps": steps, "first_batch_and_waits_s": waiting,
            "step_s": computing / steps, "chunks_per_s": 2 * batch * steps / computing, **usage()}


def stage_embed(save, roots, workers=2):
    from sincmi.data import RecipeDatasets, load_manifest
    from sincmi.encoder import SincNetEncoder
    from sincmi.verification import embed_dataset

    _fork_workers()
    encoder = SincNetEncoder(chunk_size=3200, sinc_filters=80, sinc_kernel=251, conv_channels=[60, 60],
                             conv_kernels=[5, 5], fc_sizes=[2048, 2048, 2048])
    rows = load_manifest(os.path.join(save, "verification.csv"), roots)
    dataset = RecipeDatasets({"chunk_size": 3200, "sample_rate": RATE}).sentences(rows)
    usage, start = Usage(), time.perf_counter()
    embeddings = embed_dataset(encoder, dataset, batch_size=1, shift=1600, progress=False, num_workers=workers,
                               max_chunks=1024)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "utterances": len(embeddings), "utterances_per_s": len(embeddings) / wall, **usage()}


def stage_scoring(folder, utterances=145_160, dim=2048, trials=579_818):
    """``python -m sincmi score`` at VoxCeleb1-E's size on random embeddings: its wall time and peak memory."""
    rng = np.random.default_rng(0)
    path = os.path.join(folder, "emb")
    np.save(path + ".npy", rng.standard_normal((utterances, dim), dtype=np.float32))
    with open(path + ".csv", "w") as f:
        f.write("id,path,speaker\n" + "".join(f"u{i},u{i}.wav,s{i // 50}\n" for i in range(utterances)))
    pairs = rng.integers(0, utterances, (trials, 2))
    with open(os.path.join(folder, "trials.txt"), "w") as f:
        f.write("".join(f"{int(a // 50 == b // 50)} u{a} u{b}\n" for a, b in pairs))
    usage, start = Usage(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sincmi", "score", path + ".npy",
                           os.path.join(folder, "trials.txt"), "--out_folder", os.path.join(folder, "scores")],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the scoring command's own peak
    embeddings = utterances * dim * 4 / 2**20
    return {"wall_s": wall, "embeddings_mib": embeddings, "trials": trials, "cpu_s": usage()["cpu_s"],
            "peak_mib": peak, "peak_over_embeddings_mib": peak - embeddings}


def scale_section(in_child, files=20000, folder=None):
    """Every stage on a generated VoxCeleb-layout corpus; rows of wall time, CPU time and peak memory."""
    keep = folder is not None
    folder = folder or tempfile.mkdtemp(prefix="sincmi_scale_")
    os.makedirs(folder, exist_ok=True)
    start = time.perf_counter()
    vox1, vox2 = write_voxceleb_corpus(folder, files)
    written = time.perf_counter() - start
    save, roots = os.path.join(folder, "save"), {"voxceleb1": os.path.join(folder, "VoxCeleb1"),
                                                 "voxceleb2": os.path.join(folder, "VoxCeleb2", "aac")}
    stages = {}
    stages["prepare (parallel headers)"] = in_child(stage_prepare, vox1, vox2, save)
    million = write_million_row_manifest(os.path.join(folder, "million.csv"))
    stages["1 M-row manifest, table"] = in_child(stage_manifest, million, "table")
    stages["1 M-row manifest, dicts"] = in_child(stage_manifest, million, "dicts")
    stages["pack shards"] = in_child(stage_shards, save, roots, os.path.join(folder, "shards"))
    stages["LIM steps from shards"] = in_child(stage_lim_steps, os.path.join(folder, "shards"))
    stages["embed trial utterances"] = in_child(stage_embed, save, roots)
    stages["score Vox1-E size"] = in_child(stage_scoring, folder)
    if not keep:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return {"files": files, "corpus_written_s": written, "stages": stages}


def print_data(result):
    print(f"settings (recipes/VoxCeleb/hparams/lim_nce.yaml): {json.dumps(result['settings'])}")
    print(f"corpus: {result['corpus']}")
    print(f"{'round':>5}  {'format':>6}  {'reader':>6}  {'pairs per worker CPU-s':>22}  {'pairs':>6}  note")
    for row in result["rows"]:
        note = (f"packed in {row['packing_s']:.1f} s, {row['shards']} shards, {row['shard_mib']:.0f} MiB"
                if "packing_s" in row else "")
        print(f"{row['round']:>5}  {row['format']:>6}  {row['reader']:>6}  {row['pairs_per_cpu_s']:>22,.0f}  "
              f"{row['pairs']:>6}  {note}")
    print("median (range) over the rounds:")
    for key, value in result["summary"].items():
        low, high = result["ranges"][key]
        print(f"  {key:<12} {value:>10,.2f}  ({low:,.2f}-{high:,.2f})")


def print_scale(result):
    print(f"{result['files']:,} training files written in {result['corpus_written_s']:.0f} s")
    print(f"{'stage':<28}{'wall s':>8}{'CPU s':>8}{'peak MiB':>10}{'added MiB':>10}  details")
    for name, row in result["stages"].items():
        details = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()
                   if k not in ("wall_s", "cpu_s", "peak_mib", "added_mib")}
        added = f"{row['added_mib']:.0f}" if "added_mib" in row else "-"
        print(f"{name:<28}{row['wall_s']:>8.1f}{row['cpu_s']:>8.1f}{row['peak_mib']:>10.0f}{added:>10}  "
              f"{json.dumps(details)}")
