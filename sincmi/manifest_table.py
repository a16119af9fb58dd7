"""A manifest held as columns: NumPy arrays, not a dict per row.

At VoxCeleb2 size (3.2 M segments) a manifest read as SpeechBrain's
``{id: {column: value}}`` takes about 900 MB per process, and every loader
worker that touches the rows copies the pages it touches (reference counts
change on read). :class:`ManifestTable` keeps each column as one array
(strings as fixed-width bytes or as codes into a table of distinct values), so
a million rows take tens of MB and reading a row writes nothing. It is a
read-only ``Mapping`` from id to a row dict made on demand, so code written
for the dict form keeps working on small manifests.

Example
-------
>>> table = ManifestTable.from_rows({"b": {"wav": "x.wav", "start": 0, "stop": 8, "spk_id": "s"},
...                                  "a": {"wav": "x.wav", "start": 8, "stop": 16, "spk_id": "s"}})
>>> list(table), table["a"]["start"], table.row(0)["gain"]
(['b', 'a'], 8, 1.0)
"""

from collections.abc import Mapping

import numpy as np

INTEGER_COLUMNS = ("start", "stop", "rate")
FLOAT_COLUMNS = ("gain", "duration")
DEFAULTS = {"gain": 1.0, "rate": 0}


def _bytes_array(values):
    """Strings as one fixed-width UTF-8 bytes array (no Python object per value)."""
    return np.array([v.encode() for v in values], dtype=bytes) if len(values) else np.array([], dtype="S1")


class ManifestTable(Mapping):
    """Manifest rows as columns; a read-only ``{id: row}`` mapping.

    Arguments
    ---------
    ids : numpy.ndarray
        Bytes array of the row ids, in manifest order.
    numbers : dict
        ``{column: array}`` for ``start``, ``stop``, ``rate`` (int64) and
        ``gain``, ``duration`` (float64).
    strings : dict
        ``{column: (codes int32 array, distinct values bytes array)}`` for
        the text columns (``wav``, ``spk_id``, ``sentence``...).
    """

    def __init__(self, ids, numbers, strings):
        self.ids = ids
        self.numbers = numbers
        self.strings = strings
        self._sorted = None

    @classmethod
    def from_rows(cls, rows):
        """A table of ``{id: row}`` dicts (in their order); missing ``gain``/``rate`` get their defaults."""
        keys = list(rows)
        values = list(rows.values())
        columns = {name for row in values for name in row} | set(DEFAULTS)
        numbers, strings = {}, {}
        for name in sorted(columns):
            column = [row.get(name, DEFAULTS.get(name)) for row in values]
            if name in INTEGER_COLUMNS:
                numbers[name] = np.array([int(v or 0) for v in column], dtype=np.int64)
            elif name in FLOAT_COLUMNS:
                numbers[name] = np.array([float(v if v not in (None, "") else DEFAULTS.get(name, 0.0))
                                          for v in column], dtype=np.float64)
            else:
                strings[name] = cls._codes(["" if v is None else str(v) for v in column])
        return cls(_bytes_array(keys), numbers, strings)

    @classmethod
    def from_csv(cls, path, replacements=None, rows_per_read=200_000):
        """Reads a manifest CSV (``ID`` first), replacing ``$name`` in text columns by ``replacements[name]``.

        Read ``rows_per_read`` rows at a time, each part turned into arrays
        at once, so that reading costs little more memory than the table.
        """
        import pandas as pd

        parts = {}
        for frame in pd.read_csv(path, dtype=str, keep_default_na=False, engine="c", chunksize=rows_per_read):
            if "ID" not in frame.columns:
                raise ValueError(f"{path}: a manifest needs an ID column")
            for name in frame.columns:
                column = frame[name]
                if name in INTEGER_COLUMNS:
                    values = pd.to_numeric(column.replace("", "0")).to_numpy(np.int64)
                elif name in FLOAT_COLUMNS:
                    values = pd.to_numeric(column.replace("", str(DEFAULTS.get(name, 0.0)))).to_numpy(np.float64)
                else:
                    values = column.str.encode("utf-8").to_numpy(dtype=bytes)
                parts.setdefault(name, []).append(values)
        if not parts:  # a header without rows
            return cls.from_rows({})
        columns = {name: np.concatenate(values) for name, values in parts.items()}
        del parts
        ids = columns.pop("ID")
        numbers = {name: columns.pop(name) for name in list(columns) if name in INTEGER_COLUMNS + FLOAT_COLUMNS}
        for name, value in DEFAULTS.items():
            if name not in numbers:
                numbers[name] = np.full(len(ids), value, dtype=np.int64 if name in INTEGER_COLUMNS else np.float64)
        strings = {}
        for name, values in columns.items():
            distinct, codes = np.unique(values, return_inverse=True)
            distinct = [_replace(value.decode(), replacements) for value in distinct]
            strings[name] = (codes.astype(np.int32), _bytes_array(distinct))
        return cls(ids, numbers, strings)

    @staticmethod
    def _codes(values):
        distinct, codes = np.unique(np.array(values, dtype=object), return_inverse=True) if values else ([], [])
        return np.asarray(codes, dtype=np.int32), _bytes_array(list(distinct))

    @classmethod
    def concat(cls, tables):
        """One table of the rows of ``tables`` (in order); a column missing from one is empty there."""
        tables = [t if isinstance(t, ManifestTable) else cls.from_rows(t) for t in tables]
        tables = [t for t in tables if len(t)]
        if not tables:
            return cls.from_rows({})
        ids = np.concatenate([t.ids.astype(bytes) for t in tables])
        numbers = {name: np.concatenate([t.numbers.get(name, np.zeros(len(t), dtype=tables[0].numbers[name].dtype))
                                         for t in tables]) for name in tables[0].numbers}
        strings = {}
        for name in sorted({n for t in tables for n in t.strings}):
            values = np.concatenate([t.strings[name][1][t.strings[name][0]] if name in t.strings
                                     else np.full(len(t), b"", dtype="S1") for t in tables])
            distinct, codes = np.unique(values, return_inverse=True)
            strings[name] = (codes.astype(np.int32), distinct)
        return cls(ids, numbers, strings)

    def __len__(self):
        return len(self.ids)

    def __iter__(self):
        return (key.decode() for key in self.ids)

    def __contains__(self, key):
        return self.position(key) is not None

    def __getitem__(self, key):
        position = self.position(key)
        if position is None:
            raise KeyError(key)
        return self.row(position)

    def position(self, key):
        """The row number of ``key``, or None."""
        if self._sorted is None:
            order = np.argsort(self.ids, kind="stable")
            self._sorted = (order, self.ids[order])
        order, ids = self._sorted
        wanted = key.encode() if isinstance(key, str) else key
        i = int(np.searchsorted(ids, wanted))
        return int(order[i]) if i < len(ids) and ids[i] == wanted else None

    def key(self, i):
        """The id of row ``i``."""
        return self.ids[i].decode()

    def text(self, name, i):
        """The text column ``name`` of row ``i``."""
        codes, distinct = self.strings[name]
        return distinct[codes[i]].decode()

    def row(self, i):
        """Row ``i`` as the dict SpeechBrain's ``load_data_csv`` gives (without ``ID``)."""
        row = {name: values[i].item() for name, values in self.numbers.items()}
        for name, (codes, distinct) in self.strings.items():
            value = distinct[codes[i]].decode()
            if value or name != "sentence":
                row[name] = value
        return row

    def seconds(self, default_rate):
        """Total duration of the rows' spans, at each row's ``rate`` (0: ``default_rate``)."""
        rates = np.where(self.numbers["rate"] > 0, self.numbers["rate"], default_rate)
        return float(((self.numbers["stop"] - self.numbers["start"]) / rates).sum())

    def nbytes(self):
        """Bytes held by the columns (what the table costs in memory, beyond a small constant)."""
        total = self.ids.nbytes + sum(a.nbytes for a in self.numbers.values())
        return total + sum(c.nbytes + d.nbytes for c, d in self.strings.values())


def _replace(value, replacements):
    if not replacements or "$" not in value:
        return value
    for name, folder in replacements.items():
        value = value.replace(f"${name}", folder or "")
    return value


def as_table(rows):
    """``rows`` as a :class:`ManifestTable` (a table is returned as it is)."""
    return rows if isinstance(rows, ManifestTable) else ManifestTable.from_rows(rows)
