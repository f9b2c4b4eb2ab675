"""An honest validation split for 20ng_nextword: held-out training *messages*, not held-out rows.

20ng_nextword's rows are positions of whole messages, shuffled; a share of its training rows held out
(`holdout`) comes from the messages trained on, so it rewards memorising them (benchmarks/
nextword_holdout.py: the count baseline scores 26.46 there against 20.18 on the test file). This script
rebuilds rows the way the data set's own builder does (its README: the previous three words by position,
a bag of the 16 before, the data set's 37,392-word vocabulary and feature ids, so the shipped model's
shapes fit), from 20newsgroups' *training* messages only, split by message with a seed: training rows
from (1 - share) of the messages, validation rows from the others. The test file is never read.

    python benchmarks/nextword_dev.py [--train-rows 200000] [--dev-rows 20000] [--share 0.1] [--seed 0]
        [--out DIR] [--model FILE.bolt ...] [--epochs N] [--threads 1]

Writes DIR/train.txt.gz and DIR/dev.txt.gz (DIR defaults to a folder in the system's temp directory,
outside the repository), scores the count baseline on them, then trains each --model on train with early
stopping on dev; prints a table and writes benchmarks/results/nextword_dev.json.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import random
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import write_json  # noqa: E402
from boltc.errors import BoltError  # noqa: E402
from nextword_holdout import DATA, baseline  # noqa: E402  (the count baseline, run as the data set ships it)

SOURCE = DATA.parent / "20newsgroups" / "train.csv.gz"
TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|[0-9]+")
CONTEXT, BAG = 3, 16


def messages(path: Path):
    """(doc id, tokens) of each message body (headers dropped, digit runs as <num>), as the builder does."""
    csv.field_size_limit(1 << 30)
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            text = row["text"]
            cut = text.find("\n\n")
            text = text[cut + 2:] if cut >= 0 else ""
            toks = ["<num>" if w.isdigit() else w for w in TOKEN.findall(text.lower())]
            if len(toks) >= 2:
                yield (row["label"], int(row["doc_id"])), toks


# The data set's build_nextword.py is not called: it takes its vocabulary from the messages it is given,
# so on 90% of the messages its ids (and the input width) would differ from the shipped files'.
def rows(docs, word_id: dict, unknown: int):
    """(label, sorted feature ids) of every position whose word is in the vocabulary."""
    width = unknown + 1
    for toks in docs:
        ids = [word_id.get(w, unknown) for w in toks]
        for t in range(1, len(ids)):
            if ids[t] == unknown:
                continue
            f = {p * width + ids[t - 1 - p] for p in range(CONTEXT) if t - 1 - p >= 0}
            f |= {CONTEXT * width + ids[q] for q in range(max(0, t - CONTEXT - BAG), max(0, t - CONTEXT))}
            yield ids[t], sorted(f)


def sample(it, n: int, rng: random.Random) -> list:
    kept = []
    for i, r in enumerate(it):
        if i < n:
            kept.append(r)
        else:
            j = rng.randrange(i + 1)
            if j < n:
                kept[j] = r
    rng.shuffle(kept)
    return kept


def write_xc(path: Path, kept: list, features: int, labels: int) -> None:
    tmp = path.with_suffix(".part")
    with gzip.open(tmp, "wt", compresslevel=1) as f:
        f.write(f"{len(kept)} {features} {labels}\n")
        f.writelines(f"{y} " + " ".join(f"{k}:1" for k in fs) + "\n" for y, fs in kept)
    tmp.replace(path)


def build(out: Path, train_rows: int, dev_rows: int, share: float, split_by: str, seed: int) -> dict:
    with gzip.open(DATA / "label_names.txt.gz", "rt") as f:
        vocab = [w.rstrip("\n") for w in f]
    word_id = {w: i for i, w in enumerate(vocab)}
    unknown = len(vocab)
    docs = list(messages(SOURCE))
    held = held_out(docs, share, split_by, seed)
    rng = random.Random(seed + 1)
    train = sample(rows((t for i, (_, t) in enumerate(docs) if i not in held), word_id, unknown), train_rows, rng)
    dev = sample(rows((t for i, (_, t) in enumerate(docs) if i in held), word_id, unknown), dev_rows, rng)
    out.mkdir(parents=True, exist_ok=True)
    features = (CONTEXT + 1) * (unknown + 1)
    write_xc(out / "train.txt.gz", train, features, len(vocab))
    write_xc(out / "dev.txt.gz", dev, features, len(vocab))
    return {"messages": len(docs), "held_messages": len(held), "train_rows": len(train), "dev_rows": len(dev)}


def held_out(docs, share: float, split_by: str, seed: int) -> set:
    """Indices of the validation messages: `latest`, the last `share` of each newsgroup by article number
    (the data set's test split is later in time than its training split: replies quote the messages they
    answer, so messages of the same weeks share text); `random`, a seeded sample of messages."""
    if split_by == "random":
        return set(random.Random(seed).sample(range(len(docs)), int(round(share * len(docs)))))
    by_group: dict = {}
    for i, ((group, article), _) in enumerate(docs):
        by_group.setdefault(group, []).append((article, i))
    held = set()
    for members in by_group.values():
        members.sort()
        held.update(i for _, i in members[len(members) - int(round(share * len(members))):])
    return held


def train_model(model: Path, out: Path, epochs: int | None, threads: int) -> dict:
    import boltc
    m = boltc.compile(str(model), threads=threads)
    t = time.time()
    kw = {"epochs": epochs} if epochs is not None else {}
    hist = m.fit(str(out / "train.txt.gz"), validation=str(out / "dev.txt.gz"), progress=False, epoch_lines=True, **kw)
    curve = [round(e.get("validation", {}).get("precision@1", float("nan")), 2) for e in hist["epochs"]]
    return {"model": str(model), "train_s": round(time.time() - t, 1), "dev_P@1_curve": curve,
            "best_dev_P@1": max(curve) if curve else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-rows", type=int, default=200_000)
    ap.add_argument("--dev-rows", type=int, default=20_000)
    ap.add_argument("--share", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split-by", choices=("latest", "random"), default="latest")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--model", type=Path, action="append", default=[])
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    if not 0.0 < args.share < 1.0:
        ap.error(f"--share: expected a fraction between 0 and 1 (exclusive), got {args.share}")
    for flag, n in (("--train-rows", args.train_rows), ("--dev-rows", args.dev_rows), ("--threads", args.threads),
                    ("--epochs", args.epochs)):
        if n is not None and n < 1:
            ap.error(f"{flag}: expected a whole number >= 1, got {n}")
    for model in args.model:
        if not model.is_file():
            ap.error(f"--model: {model} is not a file")
    if not (DATA / "label_names.txt.gz").exists() or not SOURCE.exists():
        print(f"skipped: {DATA} or {SOURCE} is absent")
        return
    out = args.out or Path(tempfile.gettempdir()) / f"boltc_nextword_dev_{args.split_by}_{args.train_rows}_{args.dev_rows}_{args.share:g}_{args.seed}"
    built = None
    if not (out / "dev.txt.gz").exists():
        built = build(out, args.train_rows, args.dev_rows, args.share, args.split_by, args.seed)
    base = baseline(out / "train.txt.gz", out / "dev.txt.gz")["P@1"]
    print(f"split in {out}: {built or 'reused'}; count baseline on the held-out messages: P@1 {base:.2f}")
    runs = []
    for model in args.model:
        try:
            r = train_model(model, out, args.epochs, args.threads)
        except BoltError as e:                 # a mistake in the model file: located, no traceback
            sys.exit(e.render() if hasattr(e, "render") else str(e))
        runs.append(r)
        print(f"| {model} | {r['best_dev_P@1']} | {r['dev_P@1_curve']} | {r['train_s']} s |", flush=True)
    write_json("nextword_dev" + (f"_{args.tag}" if args.tag else ""),
               {"synthetic": False, "command": " ".join(["benchmarks/nextword_dev.py", *sys.argv[1:]]),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "split": str(out),
                "count_baseline_P@1": base, "runs": runs})


if __name__ == "__main__":
    main()
