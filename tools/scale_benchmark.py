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
  workers, and ``tools/score_trials.py`` at VoxCeleb1-E's size (145,160
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


def data_section(in_child, files=400):
    """``{files_flac, shards_flac, files_wav, shards_wav}`` pairs per worker CPU-second, and the details."""
    settings = voxceleb_loader_settings()
    with tempfile.TemporaryDirectory() as folder:
        manifests, origin = write_loader_corpus(folder, files, 8.0, settings["segment_seconds"])
        rows, summary = [], {}
        for fmt in FORMATS:
            root = os.path.join(folder, fmt)
            for reader, result in (
                ("files", in_child(measure_files, manifests[fmt], root, settings)),
                ("shards", in_child(measure_shards, manifests[fmt], root, settings, os.path.join(folder, f"shards_{fmt}"))),
            ):
                rows.append({"format": fmt, "reader": reader, **result})
                summary[f"{reader}_{fmt}"] = round(result["pairs_per_cpu_s"], 1)
    for fmt in FORMATS:
        summary[f"ratio_{fmt}"] = round(summary[f"shards_{fmt}"] / summary[f"files_{fmt}"], 2)
    return {"settings": settings, "corpus": f"{files} files of 8 s ({origin})", "rows": rows, "summary": summary}


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


def _usage():
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"cpu_s": own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime,
            "peak_mib": own.ru_maxrss / 1024, "workers_peak_mib": kids.ru_maxrss / 1024}


def stage_prepare(vox1, vox2, save):
    from sincmi.prepare.voxceleb import prepare_voxceleb

    start = time.perf_counter()
    prepare_voxceleb(vox1, save, voxceleb2_folder=vox2, train_sets=["voxceleb2"], segment_seconds=3.0,
                     valid_speakers=20, verify_samples=False, prepare_jobs=2)
    with open(os.path.join(save, "train.csv")) as f:
        rows = sum(1 for _ in f) - 1
    return {"wall_s": time.perf_counter() - start, "rows": rows, **_usage()}


def stage_manifest(save, roots):
    """The training manifest as a table, against SpeechBrain's dict per row (``load_data_csv``)."""
    from speechbrain.dataio.dataio import load_data_csv

    from sincmi.data import load_manifest

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    table = load_manifest(os.path.join(save, "train.csv"), roots)
    wall = time.perf_counter() - start
    after_table = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = load_data_csv(os.path.join(save, "train.csv"), replacements=roots)
    after_dicts = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"wall_s": wall, "rows": len(table), "table_mib": table.nbytes() / 2**20,
            "table_added_peak_mib": (after_table - before) / 1024,
            "dicts_added_peak_mib": (after_dicts - after_table) / 1024, "dict_rows": len(rows), **_usage()}


def stage_shards(save, roots, out):
    from sincmi.shards import pack_shards

    start = time.perf_counter()
    index = pack_shards(os.path.join(save, "train.csv"), out, roots, files_per_shard=500, jobs=2, progress=False)
    return {"wall_s": time.perf_counter() - start, "shards": len(index["shards"]), "files": index["files"],
            **_usage()}


def stage_lim_steps(shards, steps=6, workers=2, batch=128):
    """LIM steps on the VoxCeleb encoder (SincNet, fast CPU implementation) reading shards through workers."""
    import torch
    from speechbrain.dataio.batch import PaddedBatch

    from sincmi.discriminator import MLPDiscriminator
    from sincmi.encoder import SincNetEncoder
    from sincmi.objectives import InfoNCE
    from sincmi.pairs import pair_logits
    from sincmi.shards import ShardPairs

    torch.manual_seed(0)
    encoder = SincNetEncoder(chunk_size=3200, sinc_filters=80, sinc_kernel=251, conv_channels=[60, 60],
                             conv_kernels=[5, 5], fc_sizes=[2048, 2048, 2048])
    critic, objective = MLPDiscriminator(2048, hidden_size=256), InfoNCE()
    optimizer = torch.optim.RMSprop(list(encoder.parameters()) + list(critic.parameters()), lr=1e-3)
    stream = ShardPairs(shards, 3200, seed=0, pairs_per_segment=8, shuffle_buffer=1024)
    loader = torch.utils.data.DataLoader(stream, batch_size=batch, num_workers=workers, collate_fn=PaddedBatch)
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
            "step_s": computing / steps, "chunks_per_s": 2 * batch * steps / computing, **_usage()}


def stage_embed(save, roots, workers=2):
    from sincmi.data import RecipeDatasets, load_manifest
    from sincmi.encoder import SincNetEncoder
    from sincmi.inference import embed_dataset

    encoder = SincNetEncoder(chunk_size=3200, sinc_filters=80, sinc_kernel=251, conv_channels=[60, 60],
                             conv_kernels=[5, 5], fc_sizes=[2048, 2048, 2048])
    rows = load_manifest(os.path.join(save, "verification.csv"), roots)
    dataset = RecipeDatasets({"chunk_size": 3200, "sample_rate": RATE}).sentences(rows)
    start = time.perf_counter()
    embeddings = embed_dataset(encoder, dataset, batch_size=1, shift=1600, progress=False, num_workers=workers,
                               max_chunks=1024)
    return {"wall_s": time.perf_counter() - start, "utterances": len(embeddings), **_usage()}


def stage_scoring(folder, utterances=145_160, dim=2048, trials=579_818):
    """``tools/score_trials.py`` at VoxCeleb1-E's size on random embeddings: its wall time and peak memory."""
    rng = np.random.default_rng(0)
    path = os.path.join(folder, "emb")
    np.save(path + ".npy", rng.standard_normal((utterances, dim), dtype=np.float32))
    with open(path + ".csv", "w") as f:
        f.write("id,path,speaker\n" + "".join(f"u{i},u{i}.wav,s{i // 50}\n" for i in range(utterances)))
    pairs = rng.integers(0, utterances, (trials, 2))
    with open(os.path.join(folder, "trials.txt"), "w") as f:
        f.write("".join(f"{int(a // 50 == b // 50)} u{a} u{b}\n" for a, b in pairs))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "score_trials.py"), path + ".npy",
                           os.path.join(folder, "trials.txt"), "--out_folder", os.path.join(folder, "scores")],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return {"wall_s": wall, "embeddings_mib": utterances * dim * 4 / 2**20, "trials": trials, **_usage(),
            "peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


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
    stages["manifest as a table"] = in_child(stage_manifest, save, roots)
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
    print(f"{'format':>6}  {'reader':>6}  {'pairs per worker CPU-s':>22}  {'pairs':>6}  note")
    for row in result["rows"]:
        note = (f"packed in {row['packing_s']:.1f} s, {row['shards']} shards, {row['shard_mib']:.0f} MiB"
                if "packing_s" in row else "")
        print(f"{row['format']:>6}  {row['reader']:>6}  {row['pairs_per_cpu_s']:>22,.0f}  {row['pairs']:>6}  {note}")


def print_scale(result):
    print(f"{result['files']:,} training files written in {result['corpus_written_s']:.0f} s")
    print(f"{'stage':<28}{'wall s':>9}{'CPU s':>9}{'peak MiB':>10}  details")
    for name, row in result["stages"].items():
        details = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()
                   if k not in ("wall_s", "cpu_s", "peak_mib")}
        print(f"{name:<28}{row['wall_s']:>9.1f}{row['cpu_s']:>9.1f}{row['peak_mib']:>10.0f}  {json.dumps(details)}")
