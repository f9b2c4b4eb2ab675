"""Reading and writing the Extreme Classification Repository text format (XC) and svmlight, into CSR.

XC:        a header line `N D L`, then one row per line: `l1,l2,... f:v f:v ...` (0-based ids; a row
           without labels starts with a space).
svmlight:  no header, `label[,label...] [qid:q] f:v ...`, optional `# comment`; ids 1-based or 0-based.

Speed (why the parser looks like this): a Python loop over tokens runs at a few MB/s, far too slow for
1 GB files. Instead each block of whole lines is parsed with whole-array numpy operations:
  1. tokens are the runs between separator bytes (whitespace, ',' and ':'); a token after ':' is a
     value, a token before ':' is a feature id, any other token is a label; its line comes from a
     searchsorted over the newline positions;
  2. `parse_numbers` reads every decimal token at once: the tokens sorted by length, step j adds the
     j-th byte of every token longer than j into an int64 mantissa (exact up to 18 digits), then one
     division by a power of ten (correctly rounded). Measured 1.3x the CPU throughput of
     `np.fromstring(sep=' ')`, and it knows which token failed, so errors name their line.
     Other shapes (exponents, inf) fall back to Python's float() token by token.
  3. blocks are parsed by PARSE_THREADS threads (numpy's loops release the GIL) and joined in order.
Files are read in blocks of whole lines (`chunk_bytes`), so memory holds a few blocks of text plus the
growing CSR arrays; `iter_chunks` yields CSR chunks for data larger than memory.
"""
from __future__ import annotations

import gzip
import itertools
import os
import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import scipy.sparse as sp

from boltc.errors import DataError, Location

# 1 MiB of text per parse step. Parsing makes ~10x the block in numpy temporaries and two blocks per
# thread are in flight, so the block size sets the reader's memory; smaller blocks also stay in cache.
# Measured streaming a 456 MB XC file (iter_chunks, 2 threads): 8 MiB 9.8 s / 439 MB peak RSS,
# 2 MiB 8.7 s / 145 MB, 1 MiB 5.6 s / 98 MB.
CHUNK_BYTES = 1 << 20
_COMMENT = re.compile(rb"#[^\n]*")
_POW10 = 10.0 ** np.arange(0, 23)
MAX_FAST = 18             # decimal digits that fit an int64 mantissa exactly
PARSE_THREADS = 2         # numpy releases the GIL in its array loops: two blocks parse at once
_QID = re.compile(rb"(?<![^\s])qid:\S*")


@dataclass
class XCChunk:
    """Rows `first_row .. first_row + X.shape[0]` of a file."""
    X: sp.csr_matrix          # (rows, n_features) float32
    Y: sp.csr_matrix          # (rows, n_labels) float32 ones (label ids as columns)
    first_row: int
    first_line: int           # 1-based line number of the chunk's first row


def open_binary(path: str | os.PathLike):
    """Plain or gzip file (by magic bytes, not by name) opened for binary reading."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot open data file: {e.strerror}", Location(str(path), 0)) from None
    magic = f.read(2)
    f.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb")
    return f


def sniff_format(path: str | os.PathLike) -> str:
    """'xc' when the first line is a header `N D L` (three integers, no ':'), else 'svmlight'."""
    with open_binary(path) as f:
        first = f.readline(1 << 16)
    parts = first.split()
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return "xc"
    return "svmlight"


def read_header(f, path: str) -> tuple[int, int, int]:
    line = f.readline(1 << 16)
    parts = line.split()
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise DataError(f"expected the XC header 'N D L' (three integers), got {line[:60].decode(errors='replace').strip()!r}",
                        Location(path, 1))
    n, d, l = (int(p) for p in parts)
    return n, d, l


def _lines_of(f, chunk_bytes: int) -> Iterator[bytes]:
    """Blocks of whole lines (each ending with b'\\n')."""
    rest = b""
    while True:
        block = f.read(chunk_bytes)
        if not block:
            break
        block = rest + block
        cut = block.rfind(b"\n")
        if cut < 0:
            rest = block
            continue
        rest = block[cut + 1:]
        yield block[:cut + 1]
    if rest:
        yield rest + b"\n"


def parse_numbers(a: np.ndarray, starts: np.ndarray, lens: np.ndarray):
    """Decimal numbers [sign] digits [. digits] at a[starts:starts+lens] -> (float64 values, ok mask).
    Tokens of other shapes (exponents, inf/nan, > 18 digits, garbage) come back with ok=False."""
    n = starts.size
    ln = np.minimum(lens, 255).astype(np.uint8)
    order = np.argsort(ln, kind="stable")[::-1]        # longest first: step j works on a prefix
    st = starts[order]
    sl = ln[order].astype(np.int64)
    mant = np.zeros(n, np.int64)
    frac = np.zeros(n, np.int64)
    dot = np.zeros(n, bool)
    neg = np.zeros(n, bool)
    bad = sl > MAX_FAST + 2
    ndig = np.zeros(n, np.int64)
    maxlen = int(sl[0]) if n else 0
    # number of tokens with length > j, for each j (prefix sizes)
    counts = np.bincount(sl, minlength=maxlen + 1)
    longer = n - np.cumsum(counts)                       # longer[j] = #tokens with len > j
    for j in range(min(maxlen, MAX_FAST + 2)):
        k = int(longer[j])
        c = a[st[:k] + j]
        d = c.astype(np.int64) - 48
        isd = (d >= 0) & (d <= 9)
        m = mant[:k]
        np.copyto(m, m * 10 + d, where=isd)
        frac[:k] += dot[:k] & isd
        ndig[:k] += isd
        isdot = c == 46
        if j == 0:
            sign = (c == 45) | (c == 43)
            neg[:k] = c == 45
            bad[:k] |= ~(isd | isdot | sign)
        else:
            bad[:k] |= ~(isd | isdot) | (isdot & dot[:k])
        dot[:k] |= isdot
    bad |= (ndig == 0) | (ndig > MAX_FAST)
    vals = mant / _POW10[np.minimum(frac, 22)]
    vals[neg] = -vals[neg]
    out = np.empty(n, np.float64)
    out[order] = vals
    ok = np.empty(n, bool)
    ok[order] = ~bad
    return out, ok


def _is_sep(a: np.ndarray) -> np.ndarray:
    # whitespace (<= ' ') or ',' or ':'; comparisons beat a lookup-table gather on large arrays
    return (a <= 32) | (a == 44) | (a == 58)


def _parse_block(block: bytes, path: str, first_line: int, n_features: int | None,
                 n_labels: int | None, one_based: bool, drop_negative: bool = False):
    """Parse whole lines into (rows, label_rows, label_ids, feat_rows, feat_ids, values)."""
    if b"\r" in block:
        block = block.replace(b"\r", b"")
    if b"#" in block:
        block = _COMMENT.sub(b"", block)
    if b"qid:" in block:
        block = _QID.sub(b"", block)
    a = np.frombuffer(block, dtype=np.uint8)
    nl = np.flatnonzero(a == 10)                      # every line ends with '\n'
    n_lines = nl.size
    line_start = np.empty(n_lines, dtype=np.int64)
    line_start[0] = 0
    line_start[1:] = nl[:-1] + 1
    blank = nl == line_start                          # empty lines are not rows
    row_of_line = np.cumsum(~blank) - 1
    n_rows = int(n_lines - blank.sum())

    sep = np.flatnonzero(_is_sep(a))
    bounds = np.concatenate(([-1], sep))
    gap = np.diff(bounds) > 1
    starts = bounds[:-1][gap] + 1
    ends = bounds[1:][gap]                            # position of the separator after the token
    prev = np.where(starts > 0, a[np.maximum(starts - 1, 0)], 10)
    nxt = a[ends]
    is_val = prev == 58
    is_idx = nxt == 58
    is_lab = ~(is_val | is_idx)
    tok_line = np.searchsorted(nl, starts)            # index of the line holding each token

    nums, ok = parse_numbers(a, starts, ends - starts)
    if not ok.all():
        # rare shapes (exponents, inf, very long) go through Python's float(); garbage is an error here
        for j in np.flatnonzero(~ok):
            tok = block[starts[j]:ends[j]].decode("utf-8", errors="replace")
            try:
                nums[j] = float(tok)
            except ValueError:
                raise DataError(f"cannot read {tok!r} as a number (expected 'l1,l2 f:v f:v ...')",
                                Location(path, first_line + int(tok_line[j]))) from None

    def fail(line, what):
        raise DataError(what, Location(path, first_line + int(line)))

    colons = np.flatnonzero(a == 58)
    if colons.size:
        bad = _is_sep(a[colons - 1]) | _is_sep(a[np.minimum(colons + 1, a.size - 1)])
        if bad.any():
            fail(np.searchsorted(nl, colons[np.argmax(bad)]), "expected 'feature:value' with no spaces around ':'")
    both = is_val & is_idx
    if both.any():
        fail(tok_line[np.argmax(both)], "a feature has two ':' (expected 'feature:value')")
    # labels come first on a line, joined by ',': the token before a label is a label on the same line
    lab_pos = np.flatnonzero(is_lab)
    if lab_pos.size:
        first_on_line = np.ones(lab_pos.size, dtype=bool)
        has_prev = lab_pos > 0
        pp = lab_pos[has_prev] - 1
        first_on_line[has_prev] = tok_line[pp] != tok_line[lab_pos[has_prev]]
        ok = first_on_line.copy()
        ok[has_prev] |= is_lab[pp] & (prev[lab_pos[has_prev]] == 44)
        if not ok.all():
            j = lab_pos[np.argmin(ok)]
            fail(tok_line[j], f"unexpected token {block[starts[j]:ends[j]].decode(errors='replace')!r} "
                              "(labels must come first, joined by ',', then 'feature:value' pairs)")
        labs = nums[lab_pos]
        if drop_negative:               # svmlight binary files label negatives -1
            keep = labs != -1
            lab_pos, labs = lab_pos[keep], labs[keep]
        badl = (labs != np.floor(labs)) | (labs < 0) | ((labs >= n_labels) if n_labels is not None else False)
        if badl.any():
            j = np.argmax(badl)
            fail(tok_line[lab_pos[j]], f"label {block[starts[lab_pos[j]]:ends[lab_pos[j]]].decode(errors='replace')} "
                 f"is not an integer in [0, {n_labels if n_labels is not None else 'inf'})")
    idx_pos = np.flatnonzero(is_idx)
    feats = nums[idx_pos]
    if one_based:
        feats = feats - 1
    vals = nums[idx_pos + 1]
    badf = (feats != np.floor(feats)) | (feats < 0) | ((feats >= n_features) if n_features is not None else False)
    if badf.any():
        j = np.argmax(badf)
        fail(tok_line[idx_pos[j]], f"feature id {block[starts[idx_pos[j]]:ends[idx_pos[j]]].decode(errors='replace')} "
             f"is not an integer in [{int(one_based)}, {(n_features + one_based) if n_features is not None else 'inf'})")
    if not np.isfinite(vals).all():
        j = np.argmin(np.isfinite(vals))
        fail(tok_line[idx_pos[j] + 1], "feature value is not a finite number")
    lab_rows = row_of_line[tok_line[lab_pos]] if lab_pos.size else np.zeros(0, np.int64)
    lab_ids = nums[lab_pos] if lab_pos.size else np.zeros(0)
    return (n_rows, lab_rows, lab_ids.astype(np.int64), row_of_line[tok_line[idx_pos]],
            feats.astype(np.int64), vals.astype(np.float32))


def parse_rows(block: bytes, path: str = "<bytes>", first_line: int = 1, n_features: int | None = None,
               n_labels: int | None = None, one_based: bool = False,
               drop_negative: bool = False) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Parse a block of whole XC/svmlight data lines (no XC header) into (X, Y) CSR.

    The public face of the block parser that `iter_chunks` runs on each chunk; other readers of byte
    ranges (the distributed shard reader) call it instead of re-implementing the format.
    - `block` holds whole lines, each ending in a newline (the caller adds one after a last line without
      it); blank lines are skipped, `# comments` and `qid:` tokens are dropped, carriage returns ignored.
    - `path` and `first_line` (the 1-based file line of the block's first line) only place errors: a
      malformed token raises DataError(message, Location(path, line of that token)).
    - `n_features` / `n_labels` bound the ids (an id out of range is an error); None takes the width from
      the largest id in the block (so two blocks may then differ in width).
    - `one_based` shifts feature ids down by one (svmlight's convention; see `looks_one_based`);
      `drop_negative` drops label -1 (svmlight binary files' negatives).
    X is (rows, D) float32 with int32 indices and int64 indptr; Y is (rows, L) ones at the label ids.
    """
    n_rows, lr, lids, fr, fids, vals = _parse_block(block, path, first_line, n_features, n_labels,
                                                    one_based, drop_negative)
    d = n_features if n_features is not None else int(fids.max(initial=-1)) + 1
    c = n_labels if n_labels is not None else int(lids.max(initial=-1)) + 1
    return _csr(fr, fids, vals, n_rows, d), _csr(lr, lids, np.ones(lids.size, np.float32), n_rows, c)


def _csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int, n_cols: int) -> sp.csr_matrix:
    """CSR with int32 indices / int64 indptr / float32 data; rows arrive in order, columns usually sorted."""
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    m = sp.csr_matrix((vals.astype(np.float32, copy=False), cols.astype(np.int32), indptr), shape=(n_rows, n_cols))
    # columns sorted and unique within each row? (true for well-formed XC files) then skip the sort
    if cols.size > 1:
        same_row = rows[1:] == rows[:-1]
        if not (cols[1:][same_row] > cols[:-1][same_row]).all():
            m.sum_duplicates()
            m.sort_indices()
            m.indices = m.indices.astype(np.int32, copy=False)
            m.indptr = m.indptr.astype(np.int64, copy=False)
    m.indices = m.indices.astype(np.int32, copy=False)
    m.indptr = m.indptr.astype(np.int64, copy=False)   # the contract: int64 indptr (scipy downcasts)
    m.has_sorted_indices = True
    return m


def iter_chunks(path: str | os.PathLike, fmt: str | None = None, n_features: int | None = None,
                n_labels: int | None = None, chunk_bytes: int = CHUNK_BYTES,
                zero_based: bool | str = "auto") -> Iterator[XCChunk]:
    """Stream a file as CSR chunks (for data larger than memory). Dimensions come from the XC header,
    else from the arguments, else from the largest id seen so far (chunk shapes may then differ)."""
    path = str(path)
    fmt = fmt or sniff_format(path)
    one_based = False
    if fmt == "svmlight":
        # svmlight ids are 1-based by convention; "auto" keeps sklearn's rule (1-based unless a 0 appears),
        # decided on the first chunk since a stream cannot look ahead
        one_based = zero_based is False or zero_based == "auto"
    with open_binary(path) as f:
        line_no = 1
        header = None
        if fmt == "xc":
            header = read_header(f, path)
            line_no = 2
            n_features = n_features or header[1]
            n_labels = n_labels or header[2]
        row = 0
        decided = fmt != "svmlight" or zero_based != "auto"
        blocks = _lines_of(f, chunk_bytes)
        if not decided:
            first = next(blocks, None)
            if first is not None:
                one_based = looks_one_based(first)
                blocks = itertools.chain([first], blocks)

        def parse(item):
            block, line0 = item
            X, Y = parse_rows(block, path, line0, n_features, n_labels, one_based,
                              drop_negative=fmt == "svmlight")
            return X, Y, line0

        def numbered():
            nonlocal line_no
            for block in blocks:
                yield block, line_no
                line_no += block.count(b"\n")

        for X, Y, line0 in _ordered_map(parse, numbered()):
            yield XCChunk(X, Y, row, line0)
            row += X.shape[0]
        if header is not None and header[0] != row:
            raise DataError(f"the header says {header[0]} rows but the file has {row}", Location(path, 1))


def _ordered_map(fn, items):
    """fn over items on PARSE_THREADS threads, results in input order, at most 2 per thread in flight
    (bounded memory); an exception surfaces when its block's turn comes, so the first bad line wins."""
    if PARSE_THREADS <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(PARSE_THREADS) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * PARSE_THREADS:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def looks_one_based(block: bytes) -> bool:
    """svmlight's id convention as sklearn decides it: 1-based unless some feature id 0 appears in
    `block` (the readers pass the file's first chunk, CHUNK_BYTES, so a stream need not look ahead)."""
    return re.search(rb"(?:^|[\s])0+:", block) is None


def read_xc(path: str | os.PathLike, fmt: str | None = None, n_features: int | None = None,
            n_labels: int | None = None, chunk_bytes: int = CHUNK_BYTES,
            zero_based: bool | str = "auto") -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Whole file -> (X (rows, D) float32 CSR, Y (rows, L) CSR of ones)."""
    chunks = list(iter_chunks(path, fmt, n_features, n_labels, chunk_bytes, zero_based))
    if not chunks:
        d = n_features or 0
        c = n_labels or 0
        return sp.csr_matrix((0, d), dtype=np.float32), sp.csr_matrix((0, c), dtype=np.float32)
    d = max(ch.X.shape[1] for ch in chunks)
    c = max(ch.Y.shape[1] for ch in chunks)
    X = _stack([ch.X for ch in chunks], d)
    Y = _stack([ch.Y for ch in chunks], c)
    return X, Y


def _stack(parts: list[sp.csr_matrix], n_cols: int) -> sp.csr_matrix:
    if len(parts) == 1:
        m = parts[0]
        if m.shape[1] != n_cols:
            m = sp.csr_matrix((m.data, m.indices, m.indptr), shape=(m.shape[0], n_cols))
            m.indptr = m.indptr.astype(np.int64, copy=False)
        return m
    indptr = [np.zeros(1, np.int64)]
    off = 0
    for m in parts:
        indptr.append(m.indptr[1:] + off)
        off += m.indptr[-1]
    m = sp.csr_matrix((np.concatenate([p.data for p in parts]), np.concatenate([p.indices for p in parts]),
                       np.concatenate(indptr)), shape=(sum(p.shape[0] for p in parts), n_cols))
    m.indices = m.indices.astype(np.int32, copy=False)
    m.indptr = m.indptr.astype(np.int64, copy=False)
    m.has_sorted_indices = True
    return m


def format_rows(X: sp.csr_matrix, Y: sp.csr_matrix, value_format: str = ".6g") -> bytes:
    """XC body lines for the rows of (X, Y). Tokens are formatted in one pass over flat lists (about
    0.4 us per nonzero), then joined per row; a row without labels starts with a space, as the format says."""
    X = sp.csr_matrix(X)
    Y = sp.csr_matrix(Y)
    fmt = "{}:{:" + value_format + "}"
    tok = [fmt.format(j, v) for j, v in zip(X.indices.tolist(), X.data.tolist())]
    lab = list(map(str, Y.indices.tolist()))
    xp, yp = X.indptr.tolist(), Y.indptr.tolist()
    lines = [",".join(lab[yp[i]:yp[i + 1]]) + " " + " ".join(tok[xp[i]:xp[i + 1]]) for i in range(X.shape[0])]
    return ("\n".join(lines) + "\n").encode() if lines else b""


def write_xc(path: str | os.PathLike, X: sp.csr_matrix, Y: sp.csr_matrix, value_format: str = ".6g") -> None:
    """Write an XC file (gzip when the name ends in .gz), atomically."""
    X = sp.csr_matrix(X)
    Y = sp.csr_matrix(Y)
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    tmp = path.with_name(path.name + ".tmp")
    with opener(tmp, "wb") as f:
        f.write(f"{X.shape[0]} {X.shape[1]} {Y.shape[1]}\n".encode())
        for s in range(0, X.shape[0], 65536):
            f.write(format_rows(X[s:s + 65536], Y[s:s + 65536], value_format))
    os.replace(tmp, path)
