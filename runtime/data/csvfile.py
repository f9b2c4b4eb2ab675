"""CSV / TSV files with text and categorical columns -> Dataset (hashed CSR inputs + label CSR).

`load_csv_dataset(source, plan)` reads the columns the plan's text/categorical inputs and its target
name, in chunks of rows: each chunk's strings are featurised (runtime/data/text.py) and dropped before the
next chunk is read, so memory holds one chunk of raw text plus the growing CSR arrays, never the whole
file twice.

Reading rules (decisions):
- The first row is the header (option `header=false` for none: columns are then named "0", "1", ...);
  option `names="label,sentence"` replaces the header's names (e.g. to read files whose headers differ).
- A column is named by its header name, or by a 0-based integer position.
- CSV: RFC-4180 quoting with '"' (quoted fields may hold the delimiter, doubled quotes and newlines).
  TSV: no quoting by default (GLUE-style TSVs hold literal '"'); option `quote='"'` turns it on.
  Option `delimiter` overrides either (`"\\t"` or `"tab"` for a tab).
- gzip is detected by its magic bytes, not the file name; text is UTF-8 (a leading BOM is ignored).
- Blank lines are skipped; a row whose field count differs from the header's is an error.
- Labels (target `column`, default "label"): single-label targets map class names to ids. The mapping
  comes from `class_names` (argument, else `plan["target"]["class_names"]`, i.e. the trained model's);
  without one it is built from the file: labels that are all integers are ids themselves (0..n-1, names
  "0".."n-1"), other labels are sorted and numbered. A label outside the mapping is an error naming the
  file, line and column. Binary targets accept 1/0, true/false, yes/no, pos/neg, positive/negative.
  Multi-label fields hold names joined by `label_sep` (default ",").
Errors are DataError with Location(file, line, column) where line is the 1-based physical line where the
row starts and column is the 1-based field number (the message names the column).
"""
from __future__ import annotations

import csv
import gzip
import io
import re
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from boltc.errors import DataError, Location
from boltc.runtime.data.dataset import Dataset
from boltc.runtime.data.text import featurize_column, featurizer_inputs

CHUNK_ROWS = 8192            # rows featurised at once: amortises NumPy calls, bounds raw text in memory
CHUNK_CHARS = 4 << 20        # ... or fewer rows when they hold this much text (long documents)
_INT = re.compile(r"[+-]?\d+\Z")
_BINARY = {"1": 1, "0": 0, "true": 1, "false": 0, "yes": 1, "no": 0, "pos": 1, "neg": 0,
           "positive": 1, "negative": 0, "+1": 1, "-1": 0}
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))   # newsgroup posts reach 160 KB; the default is 128 KB


def _options(source: dict) -> dict:
    """csv options may sit in source["options"] or at the top level of the source dict."""
    opts = dict(source.get("options") or {})
    for k, v in source.items():
        if k not in ("kind", "path", "format", "options", "loc"):
            opts.setdefault(k, v)
    return opts


def _dialect(path: str, fmt: str | None, opts: dict) -> dict:
    name = path.lower().removesuffix(".gz")
    fmt = fmt or ("tsv" if name.endswith((".tsv", ".tab")) else "csv")
    if fmt not in ("csv", "tsv"):
        raise DataError(f"not a CSV/TSV format: {fmt!r}", Location(path, 0))
    delim = opts.get("delimiter", "\t" if fmt == "tsv" else ",")
    delim = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}.get(delim, delim)
    if not isinstance(delim, str) or len(delim) != 1:
        raise DataError(f"delimiter must be one character, not {delim!r}", Location(path, 0))
    quote = opts.get("quote", '"' if fmt == "csv" else None)
    if quote in (None, "", "none", False):
        return {"delimiter": delim, "quoting": csv.QUOTE_NONE}
    # strict: a quote never closed before the end of the file is an error, not a silently long field
    return {"delimiter": delim, "quotechar": quote, "doublequote": True, "quoting": csv.QUOTE_MINIMAL,
            "strict": True}


def _open_text(path: str, encoding: str):
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot open data file: {e.strerror}", Location(path, 0)) from None
    magic = f.read(2)
    f.seek(0)
    if magic == b"\x1f\x8b":
        f = gzip.GzipFile(fileobj=f, mode="rb")
    return io.TextIOWrapper(f, encoding=encoding, newline="")


def _bad_utf8(path: str, encoding: str) -> DataError:
    """The error path of a decode failure: re-read the file as bytes to name the line and column."""
    with _open_text(path, encoding) as f:
        raw = f.buffer
        for line_no, line in enumerate(raw, start=1):
            try:
                line.decode(encoding)
            except UnicodeDecodeError as e:
                return DataError(f"not {encoding.removesuffix('-sig').upper()} text: byte 0x{line[e.start]:02x} "
                                 f"({e.reason})", Location(path, line_no, e.start + 1))
    return DataError(f"not {encoding} text", Location(path, 0))


def _column_index(header: list[str], column, who: str, path: str) -> int | None:
    if isinstance(column, int) or (isinstance(column, str) and _INT.match(column) and column not in header):
        i = int(column)
        if 0 <= i < len(header):
            return i
        raise DataError(f"{who} reads column {i}, but the file has {len(header)} columns", Location(path, 1))
    if column in header:
        return header.index(column)
    return None


def _rows(reader, path: str, width: int, encoding: str):
    """(start line, fields) of every non-blank row; csv errors become located DataErrors."""
    line = reader.line_num
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"malformed CSV: {e}", Location(path, line + 1)) from None
        except UnicodeDecodeError:
            raise _bad_utf8(path, encoding) from None
        start, line = line + 1, reader.line_num
        if not fields:
            continue
        if len(fields) != width:
            raise DataError(f"row has {len(fields)} fields, the header has {width}"
                            + (" (an unclosed quote?)" if len(fields) < width else ""), Location(path, start))
        yield start, fields


class _LabelMapper:
    """Turns label strings into ids; names each bad one by file, line and field."""

    def __init__(self, target: dict, class_names, path: str, field: int, column: str, opts: dict):
        self.kind = target.get("kind", "single")
        self.classes = int(target.get("classes") or 0)
        self.names = list(class_names) if class_names else None
        self.index = {n: i for i, n in enumerate(self.names)} if self.names else None
        self.path, self.field, self.column = path, field, column
        self.sep = opts.get("label_sep", ",")
        self.as_names = bool(target.get("as_names"))

    def _where(self, line: int) -> Location:
        return Location(self.path, int(line), self.field + 1)

    def _split(self, value: str) -> list[str]:
        return [v.strip() for v in value.split(self.sep)] if self.kind == "multi" else [value.strip()]

    def to_csr(self, values: list[str], lines: np.ndarray) -> tuple[sp.csr_matrix, list[str] | None]:
        if self.kind == "binary":
            return self._binary(values, lines)
        parts = [self._split(v) for v in values]
        for p, line in zip(parts, lines):
            if not p or any(x == "" for x in p):
                raise DataError(f"empty label in column '{self.column}'", self._where(line))
        index, names = self.index, self.names
        if index is None:
            index, names = self._build_mapping(parts, lines)
        counts = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        ids = np.empty(int(counts.sum()), dtype=np.int32)
        k = 0
        for p, line in zip(parts, lines):
            for x in p:
                i = index.get(x)
                if i is None:
                    known = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
                    raise DataError(f"unknown label '{x}' in column '{self.column}'; the model knows {known}",
                                    self._where(line))
                ids[k] = i
                k += 1
        classes = max(self.classes, len(names))
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        y = sp.csr_matrix((np.ones(len(ids), np.float32), ids, indptr), shape=(len(parts), classes))
        y.sum_duplicates()
        y.data[:] = 1.0
        return y, names

    def _build_mapping(self, parts, lines) -> tuple[dict, list[str]]:
        flat = {x for p in parts for x in p}
        numeric = bool(flat) and all(_INT.match(x) for x in flat)
        if numeric and self.as_names:
            # label(n, as_names=true): integers are names (codes, years, star ratings), not ids; ids in
            # numeric order, so "2" comes before "10"
            names = sorted(flat, key=int)
            if self.classes and len(names) > self.classes:
                raise DataError(f"column '{self.column}' holds {len(names)} distinct labels but the target "
                                f"declares {self.classes} classes", self._where(lines[0] if len(lines) else 0))
            return {n_: i for i, n_ in enumerate(names)}, names
        if numeric:
            n = self.classes or (max(int(x) for x in flat) + 1)
            for p, line in zip(parts, lines):
                for x in p:
                    if not 0 <= int(x) < n:
                        raise DataError(f"label {x} in column '{self.column}' is outside 0..{n - 1} "
                                        f"(the target declares {n} classes)", self._where(line))
            names = [str(i) for i in range(n)]
            return {x: int(x) for x in flat} | {n_: i for i, n_ in enumerate(names)}, names
        names = sorted(flat)
        if self.classes and len(names) > self.classes:
            seen: set[str] = set()
            for p, line in zip(parts, lines):
                seen.update(p)
                if len(seen) > self.classes:
                    raise DataError(f"column '{self.column}' holds more than {self.classes} distinct labels "
                                    f"(the target declares {self.classes}); {len(names)} in all",
                                    self._where(line))
        return {n_: i for i, n_ in enumerate(names)}, names

    def _binary(self, values, lines) -> tuple[sp.csr_matrix, list[str]]:
        pos = np.zeros(len(values), dtype=bool)
        for r, (v, line) in enumerate(zip(values, lines)):
            key = v.strip()
            if self.index is not None and key in self.index:
                pos[r] = self.index[key] == 1
                continue
            b = _BINARY.get(key.lower())
            if b is None:
                raise DataError(f"binary label '{v}' in column '{self.column}' is not one of 0/1, "
                                "true/false, yes/no, pos/neg", self._where(line))
            pos[r] = bool(b)
        rows = np.flatnonzero(pos)
        y = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, np.zeros(len(rows), np.int32))),
                          shape=(len(values), 1))
        return y, (self.names or ["0", "1"])


def load_csv_dataset(source, plan: dict, class_names: list[str] | None = None, need_labels: bool = True,
                     chunk_rows: int = CHUNK_ROWS) -> Dataset:
    """Read a CSV/TSV file named by `source` (a path or a plan data entry) as the plan's inputs.

    `need_labels=False` (predict): the label column is not read (a file may lack it, or hold labels the
    model does not know: predicting does not need them); `labels` is None.
    """
    if isinstance(source, (str, Path)):
        source = {"kind": "file", "path": str(source)}
    path = str(source["path"])
    opts = _options(source)
    dialect = _dialect(path, source.get("format"), opts)
    entries = featurizer_inputs(plan)
    others = [i["name"] for i in plan.get("inputs", []) if i.get("kind") not in ("text", "categorical")]
    if others:
        raise DataError(f"a CSV file feeds only text/categorical inputs; the model also has "
                        f"{', '.join(others)}", Location(path, 0))
    if not entries:
        raise DataError("the model has no text(...) or categorical(...) input to read this CSV into",
                        Location(path, 0))
    target = plan.get("target") or {}
    if class_names is None:
        class_names = target.get("class_names")
    max_rows = opts.get("max_rows") or opts.get("rows")
    t_start = time.perf_counter()
    encoding = opts.get("encoding", "utf-8-sig")
    with _open_text(path, encoding) as f:
        reader = csv.reader(f, **dialect)
        header_flag = opts.get("header", True)
        header_flag = header_flag not in (False, "false", "no", 0)
        try:
            first = next(reader) if header_flag else None
        except StopIteration:
            raise DataError("the file is empty (expected a header row)", Location(path, 1)) from None
        except csv.Error as e:
            raise DataError(f"cannot read the header: {e}", Location(path, 1)) from None
        except UnicodeDecodeError:
            raise _bad_utf8(path, encoding) from None
        names = opts.get("names")
        if names:
            header = [n.strip() for n in (names.split(",") if isinstance(names, str) else names)]
        elif first is not None:
            header = [h.strip() for h in first]
        else:
            raise DataError("a file without a header row needs its column names: names=\"a,b,...\"",
                            Location(path, 0))
        cols = []
        for e in entries:
            i = _column_index(header, e["column"], f"input '{e['name']}'", path)
            if i is None:
                raise DataError(f"column '{e['column']}' named by input '{e['name']}' is not in the file; "
                                f"its columns are {', '.join(header)}", Location(path, 1))
            cols.append(i)
        label_col = str(target.get("column") or "label")
        li = _column_index(header, label_col, "the target", path) if target and need_labels else None
        if li is None and need_labels and target:
            raise DataError(f"label column '{label_col}' named by target '{target.get('name')}' is not in "
                            f"the file; its columns are {', '.join(header)}", Location(path, 1))
        rows_iter = _rows(reader, path, len(header), encoding)
        mapper = _LabelMapper(target, class_names, path, li, label_col, opts) if li is not None else None

        parts: dict[str, list[sp.csr_matrix]] = {e["name"]: [] for e in entries}
        labels, label_lines = [], []
        text_bytes, feat_seconds, n = 0, 0.0, 0
        chunk: list[list[str]] = [[] for _ in entries]

        def flush():
            nonlocal text_bytes, feat_seconds
            t0 = time.perf_counter()
            for e, col in zip(entries, chunk):
                text_bytes += sum(len(s) for s in col)
                parts[e["name"]].append(featurize_column(col, e))
                col.clear()
            feat_seconds += time.perf_counter() - t0

        chunk_chars = 0
        for line, fields in rows_iter:
            for c, i in zip(chunk, cols):
                c.append(fields[i])
                chunk_chars += len(fields[i])
            if mapper is not None:
                labels.append(fields[li])
                label_lines.append(line)
            n += 1
            if len(chunk[0]) >= chunk_rows or chunk_chars >= CHUNK_CHARS:
                flush()
                chunk_chars = 0
            if max_rows and n >= int(max_rows):
                break
        flush()
    if n == 0:
        raise DataError("the file has a header but no rows", Location(path, 2))
    inputs = {name: (sp.vstack(p, format="csr") if len(p) > 1 else p[0]) for name, p in parts.items()}
    for name, m in inputs.items():
        m.indices = m.indices.astype(np.int32, copy=False)
        m.indptr = m.indptr.astype(np.int64, copy=False)
    y, names_out = (None, class_names)
    if mapper is not None:
        y, names_out = mapper.to_csr(labels, np.asarray(label_lines, dtype=np.int64))
    return Dataset(inputs=inputs, labels=y, class_names=names_out, source=path,
                   meta={"rows": n, "text_chars": text_bytes, "featurize_seconds": feat_seconds,
                         "read_seconds": time.perf_counter() - t_start - feat_seconds})
