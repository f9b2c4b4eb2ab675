"""How fast is text featurisation (runtime/data/text.py)? MB/s of raw UTF-8 text, on the real 20newsgroups
training posts (22 MB), for each tokeniser setting: the default path (native FNV span hashing when it
builds) against the pure NumPy path (BOLTC_TEXT_NATIVE=0) and a plain Python loop over the same
documented hash (the reference in runtime/data/text.py, on a 1 MB sample), all in the same run; and end to
end (gzip CSV -> csv module -> featurise -> CSR) through runtime/data/csvfile.py.

    python benchmarks/text_featurize.py [--repeat 3]

Prints a markdown table and writes benchmarks/results/text_featurize.json. Real data (not synthetic).
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from boltc.runtime.data import text as T
from boltc.runtime.data.csvfile import CHUNK_CHARS, load_csv_dataset

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
DIM = 1 << 18

SETTINGS = [
    ("words, 1-grams", dict(tokenizer="words", ngrams=1)),
    ("words, 1-2-grams", dict(tokenizer="words", ngrams=2)),
    ("words, 1-3-grams", dict(tokenizer="words", ngrams=3)),
    ("chars(4)", dict(tokenizer="chars", char_k=4, ngrams=1)),
]


def _entry(**kw):
    return {"name": "doc", "kind": "text", "dim": DIM, "column": "text", "lowercase": True, "values": "log",
            "seed": 0, **kw}


def python_loop(texts, e) -> None:
    """The same features with a plain Python loop (tokenise, hash each n-gram string, count)."""
    for t in texts:
        toks = T.tokenize(t, e["tokenizer"], e.get("char_k"), True)
        counts: dict[int, int] = {}
        for g in T.ngram_strings(toks, e["ngrams"]):
            f = T.feature_id(g, DIM)
            counts[f] = counts.get(f, 0) + 1


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    path = DATA / "20newsgroups" / "train.csv.gz"
    if not path.exists():
        print(f"skipped: {path} not present")
        return 0
    csv.field_size_limit(2**31 - 1)
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        r = csv.reader(f)
        header = next(r)
        texts = [row[header.index("text")] for row in r]
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    sample, acc = [], 0
    for t in texts[::7]:                              # ~1 MB spread over all groups
        sample.append(t)
        acc += len(t.encode("utf-8"))
        if acc > 1e6:
            break
    sample_mb = acc / 1e6

    rows = []
    for name, kw in SETTINGS:
        e = _entry(**kw)
        t_vec = best_of(lambda: T.featurize_column(texts, e), args.repeat)
        saved, T._NATIVE[:] = list(T._NATIVE), [None]
        t_numpy = best_of(lambda: T.featurize_column(texts, e), args.repeat)
        T._NATIVE[:] = saved
        nnz = T.featurize_column(texts, e).nnz
        t_vec_sample = best_of(lambda: T.featurize_column(sample, e), args.repeat)
        t_py_sample = best_of(lambda: python_loop(sample, e), 1)
        rows.append({"setting": name, "mb": round(mb, 2), "seconds": round(t_vec, 3), "mb_per_s": round(mb / t_vec, 1), "numpy_only_mb_per_s": round(mb / t_numpy, 1),
                     "nnz_per_doc": round(nnz / len(texts), 1),
                     "python_loop_mb_per_s": round(sample_mb / t_py_sample, 2),
                     "speedup_vs_python_loop": round(t_py_sample / t_vec_sample, 1)})

    # end to end: gzip + csv parsing + featurising, as training reads the file (news20.bolt's setting)
    plan = {"inputs": [_entry(tokenizer="words", ngrams=1)],
            "target": {"name": "group", "kind": "single", "classes": 20, "column": "label_name"}}
    t_e2e = best_of(lambda: load_csv_dataset(str(path), plan), args.repeat)
    ds = load_csv_dataset(str(path), plan)
    # memory: peak of Python + NumPy allocations while loading (tracemalloc sees both), vs the raw text
    import tracemalloc
    tracemalloc.start()
    ds_m = load_csv_dataset(str(path), plan)
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    x = ds_m.inputs["doc"]
    csr_mb = (x.data.nbytes + x.indices.nbytes + x.indptr.nbytes) / 1e6
    del ds_m, x
    e2e = {"setting": "load_csv_dataset (gzip CSV, words 1-grams)", "seconds": round(t_e2e, 3),
           "peak_traced_mb": round(peak, 1), "result_csr_mb": round(csr_mb, 1),
           "mb_per_s": round(mb / t_e2e, 1), "featurize_seconds": round(ds.meta["featurize_seconds"], 3),
           "read_seconds": round(ds.meta["read_seconds"], 3)}

    print(f"## Text featurisation, 20newsgroups train ({len(texts)} posts, {mb:.1f} MB of UTF-8 text), "
          f"dim 2^18, log values, l2 rows\n")
    print(f"hash path: {'native' if T._native_kernel() else 'numpy'}\n")
    print("| setting | seconds | MB/s | NumPy-only MB/s | nnz/doc | Python loop MB/s (1 MB sample) | default / loop |")
    print("|---|---|---|---|---|---|---|")
    for r_ in rows:
        print(f"| {r_['setting']} | {r_['seconds']} | {r_['mb_per_s']} | {r_['numpy_only_mb_per_s']} | {r_['nnz_per_doc']} | "
              f"{r_['python_loop_mb_per_s']} | {r_['speedup_vs_python_loop']}x |")
    print(f"| {e2e['setting']} | {e2e['seconds']} | {e2e['mb_per_s']} | | | (featurise {e2e['featurize_seconds']} s, "
          f"read+parse {e2e['read_seconds']} s) | |")
    print(f"\nload_csv_dataset peak memory (tracemalloc): {e2e['peak_traced_mb']} MB for {mb:.1f} MB of text "
          f"(the resulting CSR is {e2e['result_csr_mb']} MB and is held twice during the final concatenation; "
          f"raw text is held one chunk at a time, at most {CHUNK_CHARS >> 20} Mi characters)")
    RESULTS.mkdir(exist_ok=True)
    out = {"benchmark": "text_featurize", "data": "20newsgroups train.csv.gz (real)", "docs": len(texts),
           "mb": round(mb, 2), "hash_path": "native" if T._native_kernel() else "numpy", "rows": rows, "end_to_end": e2e, "repeat": args.repeat,
           "command": "python benchmarks/text_featurize.py", "python": platform.python_version(),
           "numpy": np.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (RESULTS / "text_featurize.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {RESULTS / 'text_featurize.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
