"""Training-data samplers: uniform (the default) and the adaptive Nadaraya-Watson sketch sampler.

Contract (docs/CONTRACTS.md section 8): `make_sampler(spec, dataset, batch, seed)` (runtime/sampler/choose.py); `batches(epoch)`
yields `(rows int64, weights float32 | None)`, N draws per epoch; `observe(rows, losses)` after each
step; `stats()`; `state_dict()` / `load_state_dict()` hold plain numpy arrays and JSON-able scalars.

The adaptive sampler (docs/sampler.md): every example's input is hashed once into R buckets
(runtime/sampler/nw_sketch.py); the losses the trainer computes anyway are added to the sketch; every `refresh`
steps every example's loss is predicted from the sketch and the sampling distribution is rebuilt:
    q_i ∝ pred_i ** (1 / temperature),   p_i = (1 - mix) q_i + mix / N
so p_i >= mix / N (no example starves). Draws come from an alias table (O(1) each). With `reweight`
each draw carries w_i = 1 / (N p_i) (<= 1 / mix, optionally clipped lower), which makes the batch-mean
gradient unbiased for the full-data mean gradient.

Decisions:
- Randomness of epoch e comes from a generator seeded by (seed, e): resuming from a checkpoint taken at
  an epoch boundary replays exactly the same draws.
- Refresh counts global steps, so the schedule continues across epochs; decay is specified per epoch
  and applied in equal parts at each refresh, so changing `refresh` does not change how fast evidence ages.
- Non-finite losses are not added to the sketch (one NaN would poison every bucket it touches).
"""
from __future__ import annotations

import math
import time

import numpy as np
import scipy.sparse as sp

from boltc.errors import BoltValidationError, Location
from boltc.runtime.data.dataset import Dataset, as_csr
from boltc.runtime.sampler import native
from boltc.runtime.sampler.nw_sketch import MAX_PROJ_ROWS, NWSketch, SRPHasher

SAMPLER_KINDS = ("uniform", "nw_sketch", "auto")
NW_KEYS = ("draw", "key", "rows", "bits", "mix", "refresh", "decay", "reweight", "temperature", "clip", "excess",
           "warmup", "keep", "drop", "floor", "seed")
DRAWS = ("thin", "alias")
KEYS = ("example", "input", "input_label")
HASH_CHUNK = 8192                 # rows hashed at a time (bounds the (chunk, R*K) projection buffer)
OBSERVED_WINDOW = 4096            # (predicted, observed) pairs kept for the free rank correlation

DEFAULTS = {
    "draw": ("thin", "thin: walk a permutation and skip examples predicted easy (runtime/sampler/thin.py); "
                     "alias draws N examples per epoch from p ∝ pred, which keeps every epoch's cost "
                     "(sst2, 3 seeds: alias 1.4-2.0x uniform's time for +0.6 test points)"),
    "key": ("input", "input: the sketch hashes each example's input (the only key draw=alias can use)"),
    "keep": ("auto", "auto: the smallest keep scale that leaves out at most `drop` of the predicted loss, "
                     "re-chosen about ten times an epoch (a fixed keep=0.5 skipped 45% of 20ng_nextword's "
                     "epochs and cost 2 points of P@1; on sst2 it cost nothing)"),
    "drop": (0.1, "0.1: skipping may leave out at most 10% of the predicted loss of an epoch"),
    "floor": (0.1, "0.1: every example is kept with probability >= 0.1, so a stale low prediction "
                   "cannot hide an example for ever"),
    "rows": (16, "16 rows: the sketch's error falls as 1/sqrt(R) (measured ~3% at R=10, ~1% at R=100 vs "
                 "the exact estimator); 16 costs 16 gathers per example per refresh"),
    "bits": ("auto", "auto: log2(N) - 1 clamped to [4, 16], about 2 examples per bucket: each example's "
                     "prediction is mostly its own recent loss, pooled over R rows with its nearest "
                     "neighbours (rank correlation with true losses 0.83 vs 0.70 at ~16 per bucket)"),
    "mix": (0.1, "0.1 of uniform: every example keeps p >= 0.1/N (no starvation; weights <= 10)"),
    "refresh": ("auto", "auto: about 10 refreshes per epoch (refresh cost O(N R) stays a few percent "
                        "of an epoch)"),
    "decay": (0.5, "0.5 per epoch: losses fall as the model learns; evidence older than ~2 epochs "
                   "weighs little"),
    "reweight": (False, "off: the measured gain (synthetic, 0.70x) needs it off; reweight=true gives unbiased "
                        "gradients and removed delicious' first-adaptive-epoch dip but also the synthetic gain"),
    "temperature": (0.25, "0.25: p proportional to predicted loss^4. Loss-proportional (1.0) stayed within 1.5x "
                          "of uniform and changed nothing measurable; on the synthetic benchmark 0.5 / 0.33 / "
                          "0.25 reached uniform's final P@1 in 0.85x / 0.78x / 0.60-0.70x the wall-clock"),
    "clip": (None, "none: weights are already bounded by 1/mix"),
    "excess": (True, "on: the sketch learns loss - log(labels of the example), the part of the cross "
                     "entropy against a normalised multi-hot target that training can remove (0 for one label)"),
    "warmup": (1, "1 epoch of uniform draws first: the sketch sees every example once before it is trusted "
                  "(adapting on a cold sketch while losses fall fastest cost accuracy early on)"),
    "seed": (None, "the training seed"),
}
# draw=thin changes three defaults: its weights are what keeps the gradient unbiased, it needs no
# sharpening (skipping already concentrates the steps on hard examples), and it predicts each candidate
# from the sketch at its turn, so it can start once the sketch has seen one epoch.
THIN_DEFAULTS = {
    "key": ("example", "example with draw=thin: each example's own last loss, no hashing (sst2 at keep 1: "
                       "kept 78% vs 91% / 93% hashing input / input_label, at 3% instead of 18% / 23% of "
                       "training time)"),
    "reweight": (False, "off with draw=thin: w = 1/k keeps each epoch's gradient unbiased (reweight=true, "
                        "tested) but cost validation accuracy on sst2 (89.45 vs 89.84 at keep 0.5, 3 seeds): "
                        "most of the gain is the shift toward hard examples, as with draw=alias"),
    "temperature": (1.0, "1 with draw=thin: keep probability proportional to the predicted loss (0.5 kept "
                         "63% on sst2 at keep 1, 0.25 kept 33% and lost 1.2 validation points)"),
}
AUTO_DEFAULTS = {
    "warmup": (0, "0 for auto: it starts uniform anyway and switches on when the predictions rank the losses"),
    "min_rows": (50_000, "50,000: below it auto is the uniform sampler. Thinning pays on large, redundant data; "
                         "on small sets an epoch costs seconds, what thinning saves is inside the run-to-run "
                         "noise, and on bibtex (4,392 rows) switching on cost 0.45 test points in 3 seeds of 3 "
                         "while watching cost delicious (11,628 rows) 1-4% of its time "
                         "(benchmarks/sampler_wallclock.py, docs/results.md)"),
}
AUTO_KEYS = ("min_rows",)        # auto's own settings, on top of NW_KEYS

def _bad(msg: str, location: Location | None) -> BoltValidationError:
    return BoltValidationError(msg, location)


def resolve_spec(spec: dict | None, n_rows: int | None = None, batch: int | None = None,
                 location: Location | None = None) -> dict:
    """Spec with every default filled; `reasons[key]` says why (for `--explain`).

    `bits` and `refresh` stay "auto" until the dataset size (n_rows) and batch are known."""
    spec = dict(spec or {"kind": "uniform"})
    kind = spec.pop("kind", "uniform")
    if kind not in SAMPLER_KINDS:
        raise _bad(f"unknown sampler '{kind}' (expected one of: {', '.join(SAMPLER_KINDS)})", location)
    if kind == "uniform":
        if spec:
            raise _bad(f"sampler uniform takes no arguments (got {', '.join(sorted(spec))})", location)
        return {"kind": "uniform", "reasons": {"kind": "default: every example once per epoch, shuffled"}}
    keys = NW_KEYS + (AUTO_KEYS if kind == "auto" else ())
    unknown = sorted(set(spec) - set(keys))
    if unknown:
        raise _bad(f"unknown {kind} argument(s): {', '.join(unknown)} (expected: {', '.join(keys)})",
                   location)
    if kind == "auto" and spec.get("draw", "thin") != "thin":
        raise _bad("sampler auto switches thinning on and off: it takes no draw= argument", location)
    out = {"kind": kind}
    reasons = {}
    thin = spec.get("draw") in (None, "auto", "thin")
    defaults = {**DEFAULTS, **(THIN_DEFAULTS if thin else {}), **(AUTO_DEFAULTS if kind == "auto" else {})}
    for key in keys:
        if key in spec and spec[key] is not None and spec[key] != "auto":
            out[key] = spec[key]
            reasons[key] = "set in the model file"
        else:
            out[key], reasons[key] = defaults[key]
    _validate(out, location)
    if out["bits"] == "auto" and n_rows is not None:
        out["bits"] = int(min(16, max(4, round(math.log2(max(n_rows, 2))) - 1)))
        reasons["bits"] += f" -> {out['bits']} for N={n_rows}"
    if n_rows is not None and batch is not None:
        steps = max(1, math.ceil(n_rows / batch))
        if out["refresh"] == "auto":
            out["refresh"] = max(1, steps // 10)
            reasons["refresh"] += f" -> every {out['refresh']} steps ({steps} steps per epoch)"
        elif out["refresh"] < 1:      # a fraction of an epoch
            frac = out["refresh"]
            out["refresh"] = max(1, round(frac * steps))
            reasons["refresh"] += f" ({frac} of an epoch -> every {out['refresh']} steps)"
    out["reasons"] = reasons
    return out


def _validate(s: dict, location: Location | None) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise _bad(f"nw_sketch: {msg}", location)

    def is_int(v) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    def is_num(v) -> bool:
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

    need(s["draw"] in DRAWS, f"draw must be one of {', '.join(DRAWS)}, got {s['draw']!r}")
    need(s["key"] in KEYS, f"key must be one of {', '.join(KEYS)}, got {s['key']!r}")
    need(s["key"] != "example" or s["draw"] == "thin",
         "key=example (each example's own last loss) works with draw=thin only: draw=alias predicts every "
         "example from hashed neighbours")
    need(s["keep"] == "auto" or (is_num(s["keep"]) and s["keep"] > 0), f"keep must be > 0 or auto, got {s['keep']!r}")
    need(is_num(s["drop"]) and 0.0 <= s["drop"] < 1.0, f"drop must be in [0, 1), got {s['drop']!r}")
    need(is_num(s["floor"]) and 0.0 < s["floor"] <= 1.0, f"floor must be in (0, 1], got {s['floor']!r}")
    need(is_int(s["rows"]) and 1 <= s["rows"] <= 4096, f"rows must be an integer in [1, 4096], got {s['rows']!r}")
    need(s["bits"] == "auto" or (is_int(s["bits"]) and 1 <= s["bits"] <= 24),
         f"bits must be an integer in [1, 24] or auto, got {s['bits']!r}")
    need(is_num(s["mix"]) and 0.0 < s["mix"] <= 1.0, f"mix must be in (0, 1], got {s['mix']!r}")
    need(s["refresh"] == "auto" or (is_int(s["refresh"]) and s["refresh"] >= 1)
         or (is_num(s["refresh"]) and 0 < s["refresh"] < 1),
         f"refresh must be a number of steps (>= 1), a fraction of an epoch (< 1) or auto, got {s['refresh']!r}")
    need(is_num(s["decay"]) and 0.0 < s["decay"] <= 1.0, f"decay must be in (0, 1], got {s['decay']!r}")
    need(isinstance(s["reweight"], (bool, np.bool_)), f"reweight must be true or false, got {s['reweight']!r}")
    need(is_num(s["temperature"]) and s["temperature"] > 0, f"temperature must be > 0, got {s['temperature']!r}")
    need(s["clip"] is None or (is_num(s["clip"]) and s["clip"] >= 1.0), f"clip must be >= 1, got {s['clip']!r}")
    need(isinstance(s["excess"], (bool, np.bool_)), f"excess must be true or false, got {s['excess']!r}")
    need(is_int(s["warmup"]) and s["warmup"] >= 0, f"warmup must be a number of epochs >= 0, got {s['warmup']!r}")
    need(s["seed"] is None or is_int(s["seed"]), f"seed must be an integer, got {s['seed']!r}")
    need("min_rows" not in s or (is_int(s["min_rows"]) and s["min_rows"] >= 0),
         f"min_rows must be a number of training rows >= 0, got {s.get('min_rows')!r}")


def check_distributed(spec: dict | None, log=None, where: str | None = None) -> None:
    """Distributed training shards the data by worker and walks each shard in order: there is no one
    sampler that sees every example's loss. `auto` then trains uniformly (said in the log); an explicit
    nw_sketch is an error rather than a silent uniform run (`where`: the model file, named in the error;
    a .bolt file with both `distributed(...)` and `sampler nw_sketch` is refused at compile time already)."""
    kind = (spec or {}).get("kind", "uniform")
    if kind == "nw_sketch":
        raise BoltValidationError("sampler nw_sketch (train block) is not supported with distributed training "
                                  "(each worker walks its own shard, so no sampler sees every example's loss): "
                                  "use sampler uniform or auto, or train on one machine",
                                  Location(str(where), 0) if where else None)
    if kind == "auto" and log is not None:
        log("sampler auto: distributed training walks each worker's shard in order, so it trains with the "
            "uniform sampler")


def sampling_probabilities(pred: np.ndarray, mix: float, temperature: float) -> np.ndarray:
    """p = (1 - mix) * normalise(pred ** (1/T)) + mix / N; sums to one, p_i >= mix / N."""
    n = pred.shape[0]
    score = np.maximum(np.asarray(pred, dtype=np.float64), 0.0)
    if temperature != 1.0:
        score = score ** (1.0 / temperature)
    total = score.sum()
    if not np.isfinite(total) or total <= 0:
        return np.full(n, 1.0 / n)
    p = (1.0 - mix) * (score / total) + mix / n
    return p / p.sum()


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata; importing scipy.stats
    costs seconds, once, inside a training run)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    start = np.flatnonzero(np.concatenate(([True], xs[1:] != xs[:-1])))
    ends = np.append(start[1:], xs.size)
    avg = (start + ends + 1) / 2.0                       # mean of ranks start+1 .. end
    ranks = np.empty(x.size)
    ranks[order] = np.repeat(avg, ends - start)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation (average ranks for ties); None when undefined."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return None
    ra, rb = rankdata(a[ok]), rankdata(b[ok])
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


class _Timer:
    def __init__(self):
        self.seconds = 0.0
        self._t0 = 0.0

    def __enter__(self):
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds += time.perf_counter() - self._t0


class UniformSampler:
    """Every example once per epoch, in a fresh random order (the standard baseline)."""

    kind = "uniform"

    def __init__(self, n_rows: int, batch: int, seed: int = 0):
        if n_rows < 1 or batch < 1:
            raise ValueError("uniform sampler needs n_rows >= 1 and batch >= 1")
        self.n, self.batch, self.seed = int(n_rows), int(batch), int(seed)
        self._timer = _Timer()
        self.draws = 0

    def batches(self, epoch: int):
        with self._timer:
            order = np.random.default_rng([self.seed, int(epoch), 0xB01]).permutation(self.n).astype(np.int64)
        for start in range(0, self.n, self.batch):
            rows = order[start:start + self.batch]
            self.draws += rows.size
            yield rows, None

    def observe(self, rows: np.ndarray, losses: np.ndarray) -> None:
        pass

    def rank_correlation(self, true_losses: np.ndarray, rows: np.ndarray) -> float | None:
        return None

    def probabilities(self) -> np.ndarray:
        return np.full(self.n, 1.0 / self.n)

    def stats(self) -> dict:
        return {"kind": "uniform", "overhead_s": self._timer.seconds, "draws": self.draws}

    def state_dict(self) -> dict:
        return {"kind": "uniform", "draws": int(self.draws)}

    def load_state_dict(self, state: dict) -> None:
        self.draws = int(state.get("draws", 0))


def dataset_matrix(dataset: Dataset, key: str = "input") -> sp.csr_matrix:
    """Every input of the dataset side by side as one CSR matrix (what the sketch hashes); with
    key="input_label" the labels too, input and labels each scaled to unit norm so that each half
    weighs the same in the angle the hash sees."""
    parts = [as_csr(v) if sp.issparse(v) else sp.csr_matrix(np.asarray(v, dtype=np.float32))
             for v in dataset.inputs.values()]
    x = as_csr(parts[0] if len(parts) == 1 else sp.hstack(parts, format="csr"))
    if key == "input" or dataset.labels is None:
        return x
    parts = [_unit_rows(x), _unit_rows(as_csr(sp.csr_matrix(dataset.labels, dtype=np.float32)))]
    return as_csr(sp.hstack(parts, format="csr"))


def _unit_rows(m: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    return sp.diags(1.0 / np.maximum(norms, 1e-30)).astype(np.float32) @ m


class NWSketchSampler:
    """Draws examples with probability proportional to their sketch-predicted loss (see module doc)."""

    kind = "nw_sketch"

    def __init__(self, spec: dict, dataset: Dataset, batch: int, seed: int = 0,
                 codes: np.ndarray | None = None, use_native: bool | None = None):
        self.spec = {k: v for k, v in spec.items() if k != "reasons"}
        self.n, self.batch = int(dataset.rows), int(batch)
        self.seed = int(spec["seed"]) if spec.get("seed") is not None else int(seed)
        self.rows_r, self.bits = int(spec["rows"]), int(spec["bits"])
        self.mix, self.temperature = float(spec["mix"]), float(spec["temperature"])
        self.refresh_every = int(spec["refresh"])
        self.reweight, self.clip = bool(spec["reweight"]), spec["clip"]
        self.warmup = int(spec.get("warmup", 0))
        steps_per_epoch = max(1, math.ceil(self.n / self.batch))
        self.decay_per_refresh = float(spec["decay"]) ** (self.refresh_every / steps_per_epoch)
        self.native = native.available() if use_native is None else bool(use_native)
        # Irreducible part of each example's loss: cross entropy against a normalised multi-hot target of
        # c labels is at least log(c). Without removing it, examples with many labels look "hard" forever.
        self.loss_floor = None
        if spec.get("excess", True) and dataset.labels is not None:
            counts = np.diff(sp.csr_matrix(dataset.labels).indptr)
            if counts.max(initial=0) > 1:
                self.loss_floor = np.log(np.maximum(counts, 1)).astype(np.float64)
        self._timer = _Timer()
        self._hash_timer = _Timer()
        with self._hash_timer:
            self._build_predictor(dataset, spec, codes)
        self.pred = np.full(self.n, 1.0)          # predicted losses at the last refresh
        self.p = np.full(self.n, 1.0 / self.n)    # current sampling distribution
        self._alias_prob, self._alias_idx = native.build_alias(self.p, self.native)
        self.step = 0
        self.draws = 0
        self.refreshes = 0
        self._obs_pred = np.zeros(OBSERVED_WINDOW)
        self._obs_true = np.zeros(OBSERVED_WINDOW)
        self._obs_n = 0
        self._rank_corr: float | None = None

    def _build_predictor(self, dataset: Dataset, spec: dict, codes: np.ndarray | None,
                         max_proj_rows: int = MAX_PROJ_ROWS) -> None:
        """The sketch, and every example's (N, R) bucket ids: hashed once, inputs never change."""
        self.sketch = NWSketch(self.rows_r, self.bits)
        if codes is None:
            x = dataset_matrix(dataset, spec.get("key", "input"))
            self.hasher = SRPHasher(x.shape[1], self.rows_r, self.bits, self.seed, max_proj_rows)
            codes = np.empty((self.n, self.rows_r), dtype=np.int32)
            for s in range(0, self.n, HASH_CHUNK):
                codes[s:s + HASH_CHUNK] = native.hash_rows(self.hasher, x[s:s + HASH_CHUNK], self.native)
        self.codes = np.ascontiguousarray(codes, dtype=np.int32)
        if self.codes.shape != (self.n, self.rows_r):
            raise ValueError(f"codes must have shape {(self.n, self.rows_r)}, got {self.codes.shape}")

    # -- the schedule ------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Predict every example's loss from the sketch, rebuild p and its alias table, age the sketch."""
        if self.sketch.total_count > 0:
            self.pred = native.query(self.sketch, self.codes, self.native)
            self.p = sampling_probabilities(self.pred, self.mix, self.temperature)
            self._alias_prob, self._alias_idx = native.build_alias(self.p, self.native)
            self.sketch.decay(self.decay_per_refresh)
        self.refreshes += 1

    def batches(self, epoch: int):
        rng = np.random.default_rng([self.seed, int(epoch), 0xB01])
        if epoch < self.warmup:          # uniform epochs: every example once, the sketch still learns
            yield from self._warmup_batches(rng)
            return
        for start in range(0, self.n, self.batch):
            with self._timer:
                first_adaptive = start == 0 and epoch == self.warmup and self.warmup > 0
                if first_adaptive or (self.step % self.refresh_every == 0 and self.step > 0):
                    self.refresh()
                size = min(self.batch, self.n - start)
                rows = native.draw_alias(self._alias_prob, self._alias_idx, rng, size)
                weights = None
                if self.reweight:
                    w = 1.0 / (self.n * self.p[rows])
                    if self.clip is not None:
                        w = np.minimum(w, float(self.clip))
                    weights = w.astype(np.float32)
                self.step += 1
                self.draws += size
            yield rows, weights

    def _warmup_batches(self, rng):
        with self._timer:
            order = rng.permutation(self.n).astype(np.int64)
        for start in range(0, self.n, self.batch):
            rows = order[start:start + self.batch]
            self.step += 1
            self.draws += rows.size
            yield rows, (np.ones(rows.size, dtype=np.float32) if self.reweight else None)

    def observe(self, rows: np.ndarray, losses: np.ndarray) -> None:
        with self._timer:
            rows = np.asarray(rows, dtype=np.int64)
            losses = np.asarray(losses, dtype=np.float64)
            if self.loss_floor is not None:
                losses = np.maximum(losses - self.loss_floor[rows], 0.0)
            ok = np.isfinite(losses)
            if not ok.all():
                rows, losses = rows[ok], losses[ok]
            if rows.size == 0:
                return
            # the free quality signal: the prediction these rows were drawn with vs the loss now seen
            k = min(rows.size, OBSERVED_WINDOW)
            pos = (self._obs_n + np.arange(k)) % OBSERVED_WINDOW
            self._obs_pred[pos] = self.pred[rows[:k]]
            self._obs_true[pos] = losses[:k]
            self._obs_n += k
            native.update(self.sketch, self.codes, rows, losses, self.native)

    # -- quality and cost --------------------------------------------------------------------------
    def predict(self, rows: np.ndarray) -> np.ndarray:
        """The sketch's current predicted loss of each row (no side effects)."""
        return self.sketch.query(self.codes[np.asarray(rows, dtype=np.int64)])

    def rank_correlation(self, true_losses: np.ndarray, rows: np.ndarray) -> float | None:
        """Spearman correlation between true losses (computed by the trainer on a random subset) and
        the sketch's predictions for those rows; kept for stats()."""
        # a diagnostic the trainer asks for every few epochs: not part of the sampler's overhead
        rows = np.asarray(rows, dtype=np.int64)
        true_losses = np.asarray(true_losses, dtype=np.float64)
        if self.loss_floor is not None:           # compare like with like: the sketch learns the excess
            true_losses = true_losses - self.loss_floor[rows]
        self._rank_corr = spearman(self.predict(rows), true_losses)
        return self._rank_corr

    def probabilities(self) -> np.ndarray:
        return self.p.copy()

    def stats(self) -> dict:
        m = min(self._obs_n, OBSERVED_WINDOW)
        return {
            "kind": "nw_sketch", "overhead_s": self._timer.seconds, "hash_s": self._hash_timer.seconds,
            "draws": self.draws, "refreshes": self.refreshes, "native": self.native,
            "rank_correlation": self._rank_corr,
            "observed_rank_correlation": spearman(self._obs_pred[:m], self._obs_true[:m]) if m else None,
            "p_min_times_n": float(self.p.min() * self.n), "p_max_times_n": float(self.p.max() * self.n),
            "effective_sample_fraction": float(1.0 / (self.n * np.square(self.p).sum())),
            "prior": self.sketch.prior,
        }

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        # flat: arrays and JSON-able scalars only, so a checkpoint can store each array as one .npy
        sketch = {f"sketch_{k}": v for k, v in self.sketch.state_dict().items()}
        return {"kind": "nw_sketch", **sketch, "pred": self.pred.copy(),
                "p": self.p.copy(), "step": int(self.step), "draws": int(self.draws),
                "refreshes": int(self.refreshes), "seed": int(self.seed),
                "rows": self.rows_r, "bits": self.bits}

    def load_state_dict(self, state: dict) -> None:
        if (int(state["rows"]), int(state["bits"])) != (self.rows_r, self.bits):
            raise ValueError(f"sampler state is for rows={state['rows']} bits={state['bits']}, "
                             f"this sampler has rows={self.rows_r} bits={self.bits}")
        if np.asarray(state["p"]).shape != (self.n,):
            raise ValueError(f"sampler state is for {np.asarray(state['p']).shape[0]} examples, not {self.n}")
        self.sketch.load_state_dict({k[len("sketch_"):]: v for k, v in state.items() if k.startswith("sketch_")})
        self.pred = np.array(state["pred"], dtype=np.float64)
        self.p = np.array(state["p"], dtype=np.float64)
        self._alias_prob, self._alias_idx = native.build_alias(self.p, self.native)
        self.step, self.draws = int(state["step"]), int(state["draws"])
        self.refreshes, self.seed = int(state["refreshes"]), int(state["seed"])
