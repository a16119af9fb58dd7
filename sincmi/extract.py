"""Embeddings of a folder of audio files (recursive) or of a manifest.

Writes ``OUT.npy`` (one row per utterance) and ``OUT.csv`` (row, id, path,
speaker = the first folder below the source folder, as in ``DIR/<speaker>/**/*.wav``,
or the manifest's ``spk_id``), or with
``--format pt`` one ``OUT.pt`` dict (``ids``, ``paths``, ``speakers``,
``embeddings``). This is the one embeddings format: :func:`load_embeddings`
reads either form, for ``python -m sincmi score`` and your own scripts. The
embeddings are the model's, after its back end (see ``python -m sincmi export
--backend``). Files that cannot be read are listed in ``OUT_skipped.csv``
(file, reason) and skipped.

Utterances shorter than ``--max_batch_seconds`` are embedded in batches of
``--batch_size``; longer ones one at a time, block by block (bounded memory).

With ``--window`` (seconds), every file gives one row per window, every
``--hop`` seconds, with the window's ``start`` and ``end`` in seconds (columns
of ``OUT.csv``, lists ``starts``/``ends`` in ``OUT.pt``): speaker embeddings
over time, for long recordings or diarisation.

Usage:
    python -m sincmi embed pretrained/demo_lim results/Demo/corpus_1234 emb/demo
    python -m sincmi embed pretrained/demo_lim meeting_recordings/ emb/meetings --window 1.5 --hop 0.75
    python -m sincmi embed pretrained/demo_lim save/test.csv emb/test --data_root /data/TIMIT
"""

import argparse
import csv
import os
import sys

import numpy as np
import torch
from speechbrain.dataio.batch import PaddedBatch

from sincmi.audio import AUDIO_EXTENSIONS, is_audio_file
from sincmi.command_line import load_model, one_line_errors
from sincmi.data import read_segment, resampled
from sincmi.inference import TooShortError, check_length
from sincmi.prepare.manifest import inspect_audio
from sincmi.progress import progress_bar
from sincmi.scoring import EmbeddingTable



def list_utterances(source, data_root=None):
    """``[(id, path, start, stop or None, speaker)]`` from a folder or a manifest CSV."""
    if os.path.isdir(source):
        items = []
        for folder, _, files in sorted(os.walk(source, followlinks=True)):  # speaker folders may be links
            for name in sorted(files):
                if is_audio_file(name):
                    path = os.path.join(folder, name)
                    rel = os.path.relpath(path, source)
                    speaker = rel.split(os.sep)[0] if os.sep in rel else ""  # DIR/<speaker>/**/file
                    items.append((os.path.splitext(rel)[0], path, 0, None, speaker))
        return items
    if source.endswith(".csv") and os.path.isfile(source):
        items = []
        with open(source, newline="") as f:
            for row in csv.DictReader(f):
                path = row["wav"].replace("$data_root", data_root or "$data_root")
                stop = int(row["stop"]) if row.get("stop") else None
                items.append((row["ID"], path, int(row.get("start") or 0), stop, row.get("spk_id", "")))
        return items
    if not os.path.exists(source):
        raise FileNotFoundError(f"{source} does not exist: give an audio folder or a manifest .csv")
    raise ValueError(f"{source} is neither a folder nor a manifest .csv file")


def load_embeddings(path):
    """``{utterance id: embedding}`` (rows of :func:`load_embedding_table`'s matrix, not copies)."""
    table = load_embedding_table(path)
    return dict(zip(table.ids, table.matrix))


def load_embedding_table(path):
    """:class:`sincmi.scoring.EmbeddingTable` (ids and one matrix) from what ``python -m sincmi embed`` wrote (``OUT.pt``, or ``OUT.npy``
    with ``OUT.csv`` beside it). Per-window embeddings (``--window``) are refused: they are not utterances.

    Example
    -------
    >>> import tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "emb")
    >>> save_embeddings(out, "npy", ["a", "b"], ["a.wav", "b.wav"], ["s1", "s2"], torch.eye(2))
    >>> load_embedding_table(out + ".npy").ids
    ['a', 'b']
    """
    if path.endswith(".pt"):
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"{path}: cannot read embeddings ({type(error).__name__}: {error})") from error
        if not isinstance(saved, dict) or not {"ids", "embeddings"} <= set(saved):
            raise ValueError(f"{path} is not an embeddings file of python -m sincmi embed (a dict with 'ids' "
                             "and 'embeddings'): write one with python -m sincmi embed MODEL SOURCE OUT --format pt")
        ids, matrix, windowed = saved["ids"], saved["embeddings"], "starts" in saved
    elif path.endswith(".npy"):
        table = path[: -len(".npy")] + ".csv"
        if not os.path.isfile(table):
            raise ValueError(f"{path} needs {table} beside it (the utterance ids), as python -m sincmi embed writes")
        with open(table, newline="") as f:
            rows = list(csv.DictReader(f))
        ids, matrix, windowed = [row["id"] for row in rows], torch.from_numpy(np.load(path)), "start" in (rows or [{}])[0]
    else:
        raise ValueError(f"{path}: expected the .pt or .npy file written by python -m sincmi embed")
    if windowed:
        raise ValueError(f"{path} holds per-window embeddings (--window): embed whole utterances to score trials")
    if len(ids) != len(matrix) or len(set(ids)) != len(ids):
        raise ValueError(f"{path}: {len(ids)} ids ({len(set(ids))} distinct) for {len(matrix)} embeddings")
    return EmbeddingTable(list(ids), matrix)


def save_embeddings(out, fmt, ids, paths, speakers, matrix, starts=None, ends=None):
    """Writes ``OUT.pt`` or ``OUT.npy`` + ``OUT.csv`` (see the module); ``starts``/``ends``: window times."""
    windowed = starts is not None
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if fmt == "pt":
        saved = {"ids": ids, "paths": paths, "speakers": speakers, "embeddings": matrix}
        if windowed:
            saved.update(starts=starts, ends=ends)
        torch.save(saved, out + ".pt")
        return
    np.save(out + ".npy", matrix.numpy())
    with open(out + ".csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "id", "path", "speaker"] + (["start", "end"] if windowed else []))
        columns = (ids, paths, speakers, starts, ends) if windowed else (ids, paths, speakers)
        for row, values in enumerate(zip(*columns)):
            writer.writerow([row, *values])


def parse_arguments(argv):
    parser = argparse.ArgumentParser(prog="python -m sincmi embed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model folder (written by python -m sincmi export)")
    parser.add_argument("source", help="audio folder (searched recursively) or manifest .csv")
    parser.add_argument("out", help="output path without extension")
    parser.add_argument("--format", choices=["npy", "pt"], default="npy")
    parser.add_argument("--data_root", help="replaces $data_root in a manifest's paths")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_batch_seconds", type=float, default=30.0)
    parser.add_argument("--window", type=float, help="seconds: one embedding per window instead of per file")
    parser.add_argument("--hop", type=float, help="seconds between windows (default: half a window)")
    args = parser.parse_args(argv)
    if args.hop is not None and args.window is None:
        parser.error("--hop needs --window")
    if args.window is not None and args.window <= 0 or args.hop is not None and args.hop <= 0:
        parser.error("--window and --hop are positive numbers of seconds")
    return args


def usable_items(utterances, rate, chunk):
    """``(items, skipped)``: ``(item, AudioCheck)`` of the utterances a model can embed, ``(file, reason)`` of the rest.

    The preparers' checks, on the header only; any rate will do (resampled), any length of at least a chunk.
    """
    items, skipped = [], []
    for item in utterances:
        check = inspect_audio(item[1], rate, 1, resample=True, read_samples=False)
        stop = check.frames if item[3] is None else item[3]
        if not check.reason:
            try:
                check_length(int((stop - item[2]) * rate / check.rate), chunk, rate, "the file")
            except TooShortError as error:
                check = check._replace(reason=str(error))
        if check.reason:
            skipped.append((item[1], check.reason))
        else:
            items.append((item, check))
    return items, skipped


class Embedded:
    """The rows of an embed output as they are made: ids, paths, speakers, embeddings and window times."""

    def __init__(self):
        self.ids, self.paths, self.speakers, self.embeddings, self.starts, self.ends = [], [], [], [], [], []

    def add(self, item, vector, times=None):
        self.ids.append(item[0]), self.paths.append(item[1]), self.speakers.append(item[4])
        self.embeddings.append(vector)
        if times is not None:
            self.starts.append(round(times[0], 6)), self.ends.append(round(times[1], 6))


def embed_items(model, items, args, skipped):
    """Embeds ``items`` (:func:`usable_items`) into an :class:`Embedded`; files that fail are added to ``skipped``."""
    rate, out, batch = model.hparams.sample_rate, Embedded(), []

    def flush():
        if batch:
            wavs, lens = PaddedBatch([{"sig": sig} for _, sig in batch]).sig
            for item, vector in zip(batch, model.encode_batch(wavs, lens).cpu()):
                out.add(item[0], vector)
            batch.clear()

    for item, check in progress_bar(items, desc="Embedding"):
        utt_id, path, start, stop, _ = item
        stop = check.frames if stop is None else stop
        whole = start == 0 and stop == check.frames
        try:
            if args.window is not None:
                if not whole:
                    skipped.append((path, f"{utt_id} is a segment ({start}-{stop}); --window embeds whole files"))
                    continue
                times, emb = model.encode_file(path, window=args.window, hop=args.hop)
                for span, vector in zip(times.tolist(), emb):
                    out.add(item, vector, span)
            elif stop - start > args.max_batch_seconds * check.rate and whole:
                out.add(item, model.encode_file(path).cpu())
            else:
                batch.append((item, resampled(read_segment(path, start, stop - start), (check.rate, rate))))
        except Exception as error:  # a file broken past its header
            skipped.append((path, f"read failed: {error}"))
            continue
        if len(batch) == args.batch_size:
            flush()
    flush()
    return out


def main(argv=None):
    args = parse_arguments(argv)
    with one_line_errors():
        utterances = list_utterances(args.source, args.data_root)
        if args.data_root is None and any("$data_root" in item[1] for item in utterances):
            raise ValueError(f"{args.source} names its files under $data_root: pass --data_root DIR "
                             "(the folder the recipe prepared it from)")
        if not utterances:
            raise ValueError(f"{args.source} holds no audio file ({', '.join(AUDIO_EXTENSIONS)})")
        model = load_model(args.model, args.device)
    items, skipped = usable_items(utterances, model.hparams.sample_rate, model.encoder.chunk_size)
    out = embed_items(model, items, args, skipped)
    if skipped:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + "_skipped.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "reason"])
            writer.writerows(skipped)
        print(f"{len(skipped)} file(s) skipped, listed in {args.out}_skipped.csv")
    if not out.embeddings:
        sys.exit(f"error: no file of {args.source} could be embedded ({len(skipped)} skipped: "
                 f"see {args.out}_skipped.csv)")
    windowed = args.window is not None
    save_embeddings(args.out, args.format, out.ids, out.paths, out.speakers, torch.stack(out.embeddings),
                    out.starts if windowed else None, out.ends if windowed else None)
    written = f"{args.out}.pt" if args.format == "pt" else f"{args.out}.npy and {args.out}.csv"
    print(f"written {written} ({len(out.ids)} embeddings)")
    if model.backend.name == "plda":  # its trials are scored by PLDA, which the embeddings alone do not carry
        print(f"the model scores with PLDA: python -m sincmi score {args.out}.npy TRIALS --model {args.model}")


if __name__ == "__main__":
    main()
