"""Text and categorical featurisation: raw strings -> hashed sparse rows (CSR), vectorised in NumPy.

The hash (documented so any other implementation can reproduce the feature ids):

    state(token)  = FNV-1a 32-bit over the token's UTF-8 bytes, offset basis 0x811C9DC5 XOR seed
                    (seed 0 is plain FNV-1a: fnv1a32(b"a") == 0xE40C292C)
    n-gram "w1 w2" = FNV-1a of the UTF-8 string "w1 w2" (tokens joined by one space byte 0x20), so the
                    state of an n-gram continues the state of its (n-1)-gram prefix: no text is re-read
    feature id    = fmix32(state) % dim     (fmix32 = MurmurHash3's 32-bit finaliser: FNV's low bits
                    are weak, and `% dim` keeps exactly those bits; fmix32 is a bijection, so it adds no
                    collisions)

Tokenisers (after `lowercase`, which is Python's Unicode str.lower()):
  words    maximal runs of word bytes: ASCII letters, digits, '_' and every byte >= 0x80 (so letters
           outside ASCII stay inside their word). Everything else (space, punctuation) separates words.
  chars(k) windows of k Unicode characters, sliding by one, over the text with each run of white space
           replaced by one space; a non-empty text shorter than k is one token.
`ngrams=n` emits every 1..n-gram of consecutive tokens within one text (never across two rows).

Values: `counts` (occurrences of the feature id in the row, collisions add up) or `log` = log(1 + count);
then each row is scaled to unit L2 norm unless the entry says `"normalize": "none"`. Why L2 by default:
long newsgroup posts and one-line reviews then give inputs of the same scale, which is what linear text
classifiers (TF-IDF + SVM / logistic regression) rely on, and it keeps the first layer's lr independent
of document length.

TF-IDF (`idf=true`): each value is multiplied by its feature's inverse document frequency
idf_j = ln((1 + n) / (1 + df_j)) + 1 before the row is normalised, where n is the number of training
rows and df_j the number of them holding feature j (scikit-learn's smooth_idf formula, so TF-IDF + a
linear model carries over). The counts come from the training set when the model is first trained
(`fit_idf`) and are kept in the plan's input entry (`idf_rows`, `idf_df`), so evaluation and prediction
weight features exactly as training did. Before that (the training set itself being read) the values
are left unweighted and `fit_idf` weights them.

Categorical columns: the whole field (exactly as written, not lower-cased) is one token, hashed as above
with value 1; an empty field is the category "".

All hashing is done over one byte buffer per ~1 MB block of rows: tokens are (start, length) spans; the
FNV loop over their bytes runs natively (llvmlite via boltc.codegen) when that builds, else in NumPy with
tokens sorted by length so that step j updates only the tokens longer than j (work = bytes of tokens).
Both give identical ids (tests/test_text_hashing.py); everything else is whole-array NumPy/SciPy.
"""
from __future__ import annotations

import os
import re
import time
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from boltc import debug
from boltc.errors import BoltError, DataError
from boltc.lower import kernels, text as text_kernels
from boltc.runtime.data.dataset import Dataset

FNV_OFFSET = 0x811C9DC5
FNV_PRIME = 0x01000193
MASK32 = 0xFFFFFFFF
SPACE = 0x20

TOKENIZERS = ("words", "chars")
VALUES = ("counts", "log")
NORMALIZE = ("l2", "none")

# bytes that belong to a word: ASCII alphanumerics, '_' and every non-ASCII byte (UTF-8 lead/continuation)
_WORD_BYTE = np.zeros(256, dtype=bool)
for _c in b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_":
    _WORD_BYTE[_c] = True
_WORD_BYTE[0x80:] = True
_WS_RUN = re.compile(r"\s+")


# ---------------------------------------------------------------- scalar reference (the documented hash)

def fnv1a32(data: bytes, seed: int = 0) -> int:
    """FNV-1a 32-bit with the seed XORed into the offset basis. The reference for the vectorised code."""
    h = (FNV_OFFSET ^ seed) & MASK32
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & MASK32
    return h


def fmix32(h: int) -> int:
    """MurmurHash3's 32-bit finaliser (a bijection that spreads every input bit over the low bits)."""
    h &= MASK32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & MASK32
    h ^= h >> 16
    return h


def feature_id(token: str, dim: int, seed: int = 0) -> int:
    """The bucket of one token or n-gram string ("w1 w2" for a bigram)."""
    return fmix32(fnv1a32(token.encode("utf-8"), seed)) % dim


def tokenize(text: str, tokenizer: str = "words", char_k: int | None = None, lowercase: bool = True) -> list[str]:
    """Reference tokeniser (pure Python): the tokens the vectorised path hashes, in order."""
    if lowercase:
        text = text.lower()
    if tokenizer == "words":
        data = text.encode("utf-8")
        out, cur = [], bytearray()
        for b in data:
            if _WORD_BYTE[b]:
                cur.append(b)
            elif cur:
                out.append(cur.decode("utf-8"))
                cur.clear()
        if cur:
            out.append(cur.decode("utf-8"))
        return out
    text = _WS_RUN.sub(" ", text)
    k = int(char_k)
    if not text:
        return []
    if len(text) < k:
        return [text]
    return [text[i:i + k] for i in range(len(text) - k + 1)]


def ngram_strings(tokens: list[str], ngrams: int) -> list[str]:
    """Every 1..n-gram of consecutive tokens, as the space-joined strings that are hashed."""
    return [" ".join(tokens[i:i + n]) for n in range(1, ngrams + 1) for i in range(len(tokens) - n + 1)]


# ---------------------------------------------------------------- vectorised hashing

def _fmix32_np(h: np.ndarray) -> np.ndarray:
    h = h.astype(np.uint32, copy=True)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def hash_spans(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, init: np.ndarray) -> np.ndarray:
    """FNV-1a states of the byte spans buf[starts[i] : starts[i]+lengths[i]], each starting from init[i].
    Native (one llvmlite loop over the bytes) when it builds, else the NumPy loop (the specification)."""
    kernel = _native_kernel()
    if kernel is not None and len(starts):
        return kernel(buf, starts, lengths, init)
    return hash_spans_numpy(buf, starts, lengths, init)


# ---------------------------------------------------------------- native hashing (optional)
# Why: the NumPy loop costs ~4 array passes per byte position; one native loop over the bytes is ~10x
# faster and keeps featurising well below training time. Built through boltc.codegen (the one owner of
# llvmlite.binding, cached on disk by IR hash); BOLTC_TEXT_NATIVE=0 forces the NumPy path.
_NATIVE: list = []          # [callable or None] once tried


def _native_kernel():
    if not _NATIVE:
        fn = None
        if os.environ.get("BOLTC_TEXT_NATIVE", "1") != "0":
            try:
                fn = _build_native()
            except Exception:  # noqa: BLE001 - any build problem means: use the NumPy path
                fn = None
        _NATIVE.append(fn)
    return _NATIVE[0]


def _build_native():
    lib = kernels.build(text_kernels.fnv_module(FNV_PRIME))
    cfn = lib.symbol("fnv_spans")

    def run(buf, starts, lengths, init):
        buf = np.ascontiguousarray(buf, dtype=np.uint8)
        starts = np.ascontiguousarray(starts, dtype=np.int64)
        lengths = np.ascontiguousarray(lengths, dtype=np.int64)
        init = np.ascontiguousarray(init, dtype=np.uint32)
        out = np.empty(len(starts), dtype=np.uint32)
        cfn(0, len(starts), buf.ctypes.data, starts.ctypes.data, lengths.ctypes.data, init.ctypes.data,
            out.ctypes.data)
        return out
    run.lib = lib            # keep the library alive as long as the function
    return run


def hash_spans_numpy(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, init: np.ndarray) -> np.ndarray:
    """The NumPy specification of hash_spans."""
    n = len(starts)
    if n == 0:
        return np.zeros(0, dtype=np.uint32)
    # longest first, so step j touches a prefix; a 16-bit key makes NumPy's stable sort a radix sort
    if int(lengths.max()) < 65536:
        order = np.argsort((65535 - lengths).astype(np.uint16), kind="stable")
    else:
        order = np.argsort(-lengths, kind="stable")
    pos = starts[order].astype(np.int64)
    h = init[order].astype(np.uint32)
    neg_len = -lengths[order]
    maxlen = int(-neg_len[0])
    active = np.searchsorted(neg_len, -np.arange(maxlen), side="left")   # tokens longer than j
    prime = np.uint32(FNV_PRIME)
    for j in range(maxlen):
        m = int(active[j])
        hm = h[:m]
        hm ^= buf[pos[:m]]
        hm *= prime
        pos[:m] += 1
    out = np.empty(n, dtype=np.uint32)
    out[order] = h
    return out


def _encode_rows(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One uint8 buffer of the rows' UTF-8 bytes joined by '\\n' (never a word byte), with row offsets."""
    encoded = [t.encode("utf-8") for t in texts]
    lens = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    starts = np.zeros(len(encoded), dtype=np.int64)
    if len(encoded) > 1:
        np.cumsum(lens[:-1] + 1, out=starts[1:])
    buf = np.frombuffer(b"\n".join(encoded) + b"\n", dtype=np.uint8)
    return buf, starts, lens


def _word_spans(buf: np.ndarray, row_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, length, row) of every word in the buffer."""
    word = _WORD_BYTE[buf]
    edges = np.diff(word.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    rows = np.searchsorted(row_starts, starts, side="right") - 1
    return starts, ends - starts, rows


def _char_spans(buf: np.ndarray, row_starts: np.ndarray, row_lens: np.ndarray, k: int):
    """(start, length, row) of every window of k characters of each row (one span for a short row)."""
    char_pos = np.flatnonzero((buf & 0xC0) != 0x80)       # byte offset of each character (and each '\n')
    first = np.searchsorted(char_pos, row_starts)          # index of each row's first character
    last = np.searchsorted(char_pos, row_starts + row_lens)  # index of the separator after the row
    nchars = last - first
    windows = np.where(nchars >= k, nchars - k + 1, (nchars > 0).astype(np.int64))
    rows = np.repeat(np.arange(len(row_starts)), windows)
    offset = np.arange(len(rows)) - np.repeat(np.cumsum(windows) - windows, windows)
    ci = first[rows] + offset
    end = np.minimum(ci + k, last[rows])
    starts = char_pos[ci]
    return starts, char_pos[end] - starts, rows


def _ngram_ids(buf, starts, lengths, rows, ngrams: int, seed: int, dim: int):
    """Feature ids and their rows for all 1..n-grams of the given token spans."""
    init = np.full(len(starts), (FNV_OFFSET ^ seed) & MASK32, dtype=np.uint32)
    state = hash_spans(buf, starts, lengths, init)
    ids, id_rows = [_fmix32_np(state) % np.uint32(dim)], [rows]
    prime = np.uint32(FNV_PRIME)
    for n in range(2, ngrams + 1):
        # n-gram i = (n-1)-gram i, a space, token i+n-1; valid while all its tokens are in one row
        last = np.arange(n - 1, len(starts))
        first = last - (n - 1)
        ok = rows[first] == rows[last]
        first, last = first[ok], last[ok]
        cont = (state[first] ^ np.uint32(SPACE)) * prime
        new_state = hash_spans(buf, starts[last], lengths[last], cont)
        ids.append(_fmix32_np(new_state) % np.uint32(dim))
        id_rows.append(rows[first])
        state = np.zeros(len(starts), dtype=np.uint32)     # states indexed by the n-gram's first token
        state[first] = new_state
    return np.concatenate(ids).astype(np.int32), np.concatenate(id_rows)


def _to_csr(rows: np.ndarray, cols: np.ndarray, nrows: int, dim: int, values: str, normalize: str) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(nrows, dim))
    m.sum_duplicates()                                   # counts per (row, feature id), indices sorted
    if values == "log":
        np.log1p(m.data, out=m.data)
    if normalize == "l2" and m.nnz:
        _l2_rows(m)
    m.indices = m.indices.astype(np.int32, copy=False)
    m.indptr = m.indptr.astype(np.int64, copy=False)
    m.data = m.data.astype(np.float32, copy=False)
    return m


# ---------------------------------------------------------------- the plan's input entries

def check_entry(entry: dict) -> dict:
    """The featuriser settings of one plan input (kind text or categorical), defaults filled, checked."""
    kind = entry.get("kind")
    if kind not in ("text", "categorical"):
        raise BoltError(f"input '{entry.get('name')}' of kind {kind!r} is not a text or categorical input")
    out = {"name": entry["name"], "kind": kind, "dim": int(entry["dim"]), "column": entry.get("column"),
           "seed": int(entry.get("seed") or 0) & MASK32}
    if out["dim"] < 1:
        raise BoltError(f"input '{out['name']}': dim must be at least 1")
    if kind == "categorical":
        out.update(tokenizer=None, char_k=None, ngrams=1, lowercase=False, values="counts",
                   normalize=entry.get("normalize") or "none")
        return out
    tok = entry.get("tokenizer") or "words"
    char_k = entry.get("char_k")
    if isinstance(tok, str) and tok.startswith("chars"):     # tolerate "chars(3)" as one string
        m = re.fullmatch(r"chars\((\d+)\)", tok)
        tok, char_k = "chars", (int(m.group(1)) if m else char_k)
    if tok not in TOKENIZERS:
        raise BoltError(f"input '{out['name']}': tokenizer must be words or chars(k), not {tok!r}")
    if tok == "chars" and (char_k is None or int(char_k) < 1):
        raise BoltError(f"input '{out['name']}': chars(k) needs k >= 1")
    ngrams = int(entry.get("ngrams") or 1)
    if not 1 <= ngrams <= 3:
        raise BoltError(f"input '{out['name']}': ngrams must be 1, 2 or 3, not {ngrams}")
    values = entry.get("values") or "counts"
    if values not in VALUES:
        raise BoltError(f"input '{out['name']}': values must be counts or log, not {values!r}")
    normalize = entry.get("normalize") or "l2"
    if normalize not in NORMALIZE:
        raise BoltError(f"input '{out['name']}': normalize must be l2 or none, not {normalize!r}")
    lowercase = entry.get("lowercase")
    out.update(tokenizer=tok, char_k=int(char_k) if tok == "chars" else None, ngrams=ngrams,
               lowercase=True if lowercase is None else bool(lowercase), values=values, normalize=normalize,
               idf=bool(entry.get("idf")), idf_rows=entry.get("idf_rows"), idf_df=entry.get("idf_df"),
               idf_weights=idf_weights(entry))
    return out


def idf_weights(entry: dict) -> np.ndarray | None:
    """(dim,) float32 idf of a fitted `idf=true` input, else None (see the module docstring)."""
    if not entry.get("idf") or entry.get("idf_df") is None:
        return None
    df = np.asarray(entry["idf_df"], dtype=np.float64)
    n = float(entry["idf_rows"])
    return (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)


def fit_idf(entry: dict, X: sp.csr_matrix) -> sp.csr_matrix:
    """Count the document frequencies of the training rows X into `entry` (once: a fitted entry keeps
    its counts) and return X weighted by them, renormalised as the entry says."""
    if entry.get("idf_df") is None:
        df = np.bincount(X.indices[X.data != 0], minlength=int(entry["dim"]))
        entry["idf_rows"], entry["idf_df"] = int(X.shape[0]), [int(c) for c in df]
    return apply_idf(X, idf_weights(entry), entry.get("normalize") or "l2")


def apply_idf(m: sp.csr_matrix, idf: np.ndarray, normalize: str) -> sp.csr_matrix:
    """Values times idf of their column, then each row scaled to unit L2 norm again (scaling a row
    before does not change the result, so an already normalised row may come in)."""
    m = m.copy()
    m.data = (m.data * idf[m.indices]).astype(np.float32)
    if normalize == "l2" and m.nnz:
        _l2_rows(m)
    return m


def _l2_rows(m: sp.csr_matrix) -> None:
    nrows = m.shape[0]
    sq = np.add.reduceat(m.data * m.data, m.indptr[:-1][np.diff(m.indptr) > 0])
    norms = np.zeros(nrows, dtype=np.float32)
    norms[np.diff(m.indptr) > 0] = np.sqrt(sq)
    m.data /= np.repeat(norms, np.diff(m.indptr))


BLOCK_CHARS = 1 << 20     # featurise ~1 MB of text at a time: the span arrays stay in cache (1.4x faster)


@debug.stage("featurise", part="featurise", quiet=True)
def featurize_column(texts: Sequence[str], entry: dict) -> sp.csr_matrix:
    """Hash one column of strings (one per row) into a CSR matrix (rows, entry['dim']) float32."""
    e = check_entry(entry)
    lens = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    if lens.sum() <= 2 * BLOCK_CHARS:
        return _featurize_block(texts, e)
    cuts = np.searchsorted(np.cumsum(lens), np.arange(BLOCK_CHARS, int(lens.sum()), BLOCK_CHARS), side="right")
    bounds = [0, *sorted(set(int(c) for c in cuts) - {0, len(texts)}), len(texts)]
    blocks = [_featurize_block(texts[a:b], e) for a, b in zip(bounds[:-1], bounds[1:])]
    m = sp.vstack(blocks, format="csr")
    m.indices = m.indices.astype(np.int32, copy=False)
    m.indptr = m.indptr.astype(np.int64, copy=False)
    return m


def _featurize_block(texts: Sequence[str], e: dict) -> sp.csr_matrix:
    n, dim = len(texts), e["dim"]
    if n == 0:
        return _to_csr(np.zeros(0, np.int64), np.zeros(0, np.int32), 0, dim, "counts", "none")
    if e["kind"] == "categorical":
        buf, starts, lens = _encode_rows(texts)
        init = np.full(n, (FNV_OFFSET ^ e["seed"]) & MASK32, dtype=np.uint32)
        ids = (_fmix32_np(hash_spans(buf, starts, lens, init)) % np.uint32(dim)).astype(np.int32)
        return _to_csr(np.arange(n), ids, n, dim, "counts", e["normalize"])
    if e["lowercase"]:
        texts = [t.lower() for t in texts]
    if e["tokenizer"] == "chars":
        texts = [_WS_RUN.sub(" ", t) for t in texts]
        buf, row_starts, row_lens = _encode_rows(texts)
        starts, lengths, rows = _char_spans(buf, row_starts, row_lens, e["char_k"])
    else:
        buf, row_starts, _ = _encode_rows(texts)
        starts, lengths, rows = _word_spans(buf, row_starts)
    ids, id_rows = _ngram_ids(buf, starts, lengths, rows, e["ngrams"], e["seed"], dim)
    if e.get("idf_weights") is not None:
        return apply_idf(_to_csr(id_rows, ids, n, dim, e["values"], "none"), e["idf_weights"], e["normalize"])
    return _to_csr(id_rows, ids, n, dim, e["values"], e["normalize"])


def featurizer_inputs(plan: dict) -> list[dict]:
    """The plan's text/categorical inputs (checked), in plan order."""
    return [check_entry(i) for i in plan.get("inputs", []) if i.get("kind") in ("text", "categorical")]


def featurize_strings(strings, plan: dict) -> Dataset:
    """Rows to predict on, featurised as the model's inputs (no labels).

    `strings`: a list of str when the model has exactly one text/categorical input, or a list of dicts
    {column name: value} (missing columns are empty), or a dict {column name: list of values}.
    """
    entries = featurizer_inputs(plan)
    others = [i["name"] for i in plan.get("inputs", []) if i.get("kind") not in ("text", "categorical")]
    if others:
        raise BoltError(f"the model also needs non-text inputs ({', '.join(others)}); give them as a Dataset")
    if not entries:
        raise BoltError("the model has no text or categorical input to featurise strings for")
    if isinstance(strings, str):
        strings = [strings]
    elif not isinstance(strings, (dict, list)):
        strings = list(strings)                # tuples, numpy arrays of str, generators
    if isinstance(strings, dict):
        columns = {k: [str(v) for v in vals] for k, vals in strings.items()}
        n = len(next(iter(columns.values()))) if columns else 0
    elif len(strings) and isinstance(strings[0], dict):
        n = len(strings)
        columns = {e["column"]: [str(r.get(e["column"], "")) for r in strings] for e in entries}
    else:
        if len(entries) != 1:
            names = ", ".join(f"'{e['column']}'" for e in entries)
            raise BoltError(f"the model reads several columns ({names}): pass rows as dicts of column -> text")
        n = len(strings)
        columns = {entries[0]["column"]: [str(s) for s in strings]}
    t0 = time.perf_counter()
    inputs = {}
    for e in entries:
        col = columns.get(e["column"])
        if col is None:
            raise BoltError(f"input '{e['name']}' reads column '{e['column']}', which the rows do not have")
        if len(col) != n:
            raise BoltError(f"column '{e['column']}' has {len(col)} values, expected {n}")
        inputs[e["name"]] = featurize_column(col, e)
    target = plan.get("target") or {}
    return Dataset(inputs=inputs, labels=None, class_names=target.get("class_names"), source="<strings>",
                   meta={"featurize_seconds": time.perf_counter() - t0})

