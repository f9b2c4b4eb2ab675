"""Thinning: skip easy examples within an epoch, and `sampler auto`, which thins only while it pays.

An epoch walks a fresh random permutation of the training set (as `uniform`). Each candidate example i
is kept with probability
    k_i = clip(keep * s_i / mean(s), floor, 1),   s_i = max(pred_i, 0) ** (1 / temperature)
where pred_i is the Nadaraya-Watson sketch's predicted (excess) loss at the moment the example's turn
comes (runtime/sampler/nw_sketch.py; the sketch learns from the losses the trainer computes anyway), and
mean(s) is measured on a fixed random probe of PROBE_ROWS examples each time the sketch is aged (about
ten times an epoch), so a frozen sketch gives fixed keep probabilities. A kept example
carries the weight w_i = 1 / k_i, so the epoch's summed gradient is an unbiased estimate of a uniform
epoch's (E[1{kept} w_i g_i] = g_i), in fewer steps: an epoch costs about mean(k) of a uniform one.

Decisions (measured by benchmarks/sampler_wallclock.py; figures in docs/sampler.md):
- Thinning rather than drawing N examples with replacement from p ∝ pred (`draw=alias`): drawing keeps
  every epoch's cost at N steps and only changes the mix, which did not save time on real data;
  skipping is where the time goes away, and it needs no O(N R) refresh: predictions are queried per
  candidate, so they are always as fresh as the last step.
- The keep rate follows the data (keep=auto): `keep` is chosen, about ten times an epoch on the probe,
  as the smallest scale that leaves out at most `drop` (default 0.1) of the predicted loss. Where losses
  are spread evenly almost nothing is skipped (no saving, no harm: on 20ng_nextword, skipping 45% of an
  epoch at a fixed keep=0.5 cost 2 points of P@1); where most of the loss sits on a few examples, most
  of the rest is skipped (sst2: about half an epoch for 10% of the loss).
- floor bounds the weights (<= 1 / floor) and makes sure every example is revisited now and then, so a
  stale low prediction cannot hide an example for ever.
- The random keep decisions use their own generator seeded by (seed, epoch): the permutation is the one
  `uniform` walks, so a sampler that keeps everything trains exactly like `uniform`.

`auto` (AutoSampler): the same walk, starting with thinning off. While off, each batch is the permutation's
next slice (no prediction made: exactly `uniform`'s batches), its losses are learnt 8 batches at a time,
and one such group in `watch_every` records its (prediction before the loss, loss) pairs. Every `check`
steps auto ranks the latest AUTO_PAIRS pairs (weighted by 1/k while thinning, so that thinning's
preference for hard examples does not bias it). Only when the correlation reaches AUTO_ON does it measure
what thinning would keep on a fixed random probe of the data, and it switches on if that skips at least
AUTO_MIN_SKIP (30%); off again when the correlation falls below AUTO_OFF (hysteresis, so it does not
flap). Where the predictions carry no signal, auto is `uniform` plus the memory's upkeep (0.013 vs
0.005 ms a step on sst2's size, benchmarks/sampler_overhead.py).
"""
from __future__ import annotations

import math

import numpy as np

from boltc.runtime.sampler import native
from boltc.runtime.sampler.adaptive import OBSERVED_WINDOW, NWSketchSampler, rankdata

AUTO_ON = 0.3        # noise gives |rho| ~ 1/sqrt(512) = 0.044 on a full decision window: 0.3 is far outside it
AUTO_OFF = 0.15
AUTO_MIN_SKIP = 0.3  # thinning must be able to skip 30% of the data to switch on: at 10% and 20% it switched
                     # on for 20ng_nextword (which skips ~11% on average) and cost it up to 0.66 points of
                     # test P@1 for ~3-5% of the time (benchmarks/sampler_wallclock.py, docs/results.md)
MIN_PAIRS = 512      # no decision on fewer observed (prediction, loss) pairs
AUTO_PAIRS = 512     # auto decides on the latest 512 pairs (noise |rho| ~ 0.044, far below AUTO_ON): ranking
                     # 4,096 pairs ten times an epoch cost ~1% of sst2's training time (a step is ~0.7 ms
                     # of CPU there), 512 an eighth of that
THIN_PROJ_ROWS = 4096  # inputs folded to 4096 columns before projecting: a 4 MB projection that stays in
                      # cache (32,768 columns cost 6 us a row to hash on sst2, more than a training step)
PROBE_ROWS = 2048    # mean(s) is measured on this fixed random sample of the data at every ageing
DEFER_BATCHES = 8    # the plain walk learns its losses 8 batches at a time: learnt per batch, auto while off
                     # took ~5% of sst2's step CPU time (a step is ~0.7 ms there), grouped 3.5% (thread CPU
                     # time around the sampler's calls in sst2's training; uniform 0.9%)
CHUNK_BATCHES = 8    # thinning decides the candidates of 8 batches at once: numpy's per-call cost, paid
                     # per batch, was most of the sampler's 0.08 ms a step (sst2, benchmarks/sampler_overhead.py);
                     # with key=example a prediction cannot change within an epoch anyway (one visit each)


def weighted_rank_correlation(a: np.ndarray, b: np.ndarray, w: np.ndarray | None = None) -> float | None:
    """Pearson correlation of the ranks of a and b, each pair weighted by w (None: Spearman)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    w = np.ones(a.size) if w is None else np.asarray(w, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b) & (w > 0)
    if ok.sum() < 3:
        return None
    ra, rb, w = rankdata(a[ok]), rankdata(b[ok]), w[ok] / w[ok].sum()
    if np.ptp(ra) == 0 or np.ptp(rb) == 0:
        return None                     # a constant side has no ranking
    ca, cb = ra - w @ ra, rb - w @ rb
    va, vb = w @ (ca * ca), w @ (cb * cb)
    if va <= 0 or vb <= 0:
        return None
    return float((w @ (ca * cb)) / np.sqrt(va * vb))


def keep_scale_for(r: np.ndarray, floor: float, drop: float) -> float:
    """The smallest scale c such that keeping each example with k = clip(c r, floor, 1) leaves out at
    most `drop` of the loss: sum((1 - k) r) / sum(r) <= drop (r = s / mean(s) >= 0). The left-out share
    falls as c grows, so bisection (on a log scale) finds it."""
    total = float(r.sum())
    if total <= 0:
        return 1.0
    lo, hi = 1e-3, 1e3
    for _ in range(16):             # 2^-16 of the log range: the scale to within 0.03%
        mid = (lo * hi) ** 0.5
        if total - float(np.minimum(np.maximum(mid * r, floor), 1.0) @ r) > drop * total:
            lo = mid
        else:
            hi = mid
    return hi


class ExampleMemory:
    """key=example: each example's own last (excess) loss, the prior for examples not seen yet. The
    sketch's interface (query, update, decay, prior, state) over row ids instead of bucket ids: no hashing."""

    def __init__(self, n: int):
        self.loss = np.full(n, np.nan)
        self.total_loss = 0.0
        self.total_count = 0.0

    @property
    def prior(self) -> float:
        return self.total_loss / self.total_count if self.total_count > 0 else 1.0

    def query(self, rows: np.ndarray) -> np.ndarray:
        v = self.loss[rows]
        return np.where(np.isnan(v), self.prior, v)

    def update(self, rows: np.ndarray, losses: np.ndarray, total: float | None = None) -> None:
        self.loss[rows] = losses
        self.total_loss += float(losses.sum()) if total is None else total
        self.total_count += float(losses.size)

    def decay(self, factor: float) -> None:
        self.total_loss *= factor
        self.total_count *= factor

    def state_dict(self) -> dict:
        return {"loss": self.loss.copy(), "total_loss": self.total_loss, "total_count": self.total_count}

    def load_state_dict(self, state: dict) -> None:
        self.loss = np.array(state["loss"], dtype=np.float64)
        self.total_loss, self.total_count = float(state["total_loss"]), float(state["total_count"])


class ThinningSampler(NWSketchSampler):
    """Walks a random permutation per epoch and skips examples the sketch predicts to be easy."""

    kind = "nw_sketch"

    def __init__(self, spec: dict, dataset, batch: int, seed: int = 0, codes: np.ndarray | None = None,
                 use_native: bool | None = None):
        super().__init__(spec, dataset, batch, seed, codes=codes, use_native=use_native)
        self.expected_keep = 1.0
        self.fixed_keep = spec["keep"] != "auto"
        self.keep_scale = float(spec["keep"]) if self.fixed_keep else 1.0
        self.floor, self.drop = float(spec["floor"]), float(spec["drop"])
        self.thinning = True               # AutoSampler starts with it off
        self.norm = 0.0                    # mean of s over the probe (0: not yet measured)
        self.probe = np.sort(np.random.default_rng([self.seed, 0x960B]).choice(
            self.n, size=min(self.n, PROBE_ROWS), replace=False))
        self.since_decay = 0               # candidates since the sketch was last aged
        self.epoch_position = 0            # candidates of this epoch's permutation walked (the trainer's lr clock)
        self.kept, self.candidates = 0, 0  # over the last epoch (keep fraction in stats)
        self._obs_w = np.ones(OBSERVED_WINDOW)
        self._pending: dict | None = None  # the batch last yielded by the thinning walk: rows, predictions, weights
        self._norm_stale = True            # the sketch was aged since mean(s) was last measured
        # the plain walk (uniform epochs, auto while off) records the (prediction, loss) pairs of one batch in
        # watch_every: the window still refills about four times an epoch, at a fraction of the cost
        self.watch_every = max(1, min(4, self.n // (4 * OBSERVED_WINDOW)))
        self._deferred: list = []          # (rows, losses) of the plain walk not yet learnt
        self._plain_rows = None            # the batch the plain walk last yielded
        self._flushes = 0

    def _build_predictor(self, dataset, spec: dict, codes, max_proj_rows: int = 0) -> None:
        if spec.get("key") == "example":
            self.sketch, self.codes = ExampleMemory(self.n), None
            return
        super()._build_predictor(dataset, spec, codes, THIN_PROJ_ROWS)

    # -- keep decisions ----------------------------------------------------------------------------
    def keep_probabilities(self, rows: np.ndarray, pred: np.ndarray | None = None) -> np.ndarray:
        """k_i for each row from the sketch's current predictions (updates nothing)."""
        if self.sketch.total_count <= 0:
            return np.ones(len(rows))
        pred = self.predict_rows(rows) if pred is None else pred
        s = np.maximum(pred, 0.0)
        if self.temperature != 1.0:
            s = s ** (1.0 / self.temperature)
        norm = self.norm if self.norm > 0 else float(s.mean())
        if not np.isfinite(norm) or norm <= 0:
            return np.full(len(rows), self.floor)   # every loss seen is zero: all easy, revisit at the floor
        return np.clip(self.keep_scale * s / norm, self.floor, 1.0)

    def predict_rows(self, rows: np.ndarray) -> np.ndarray:
        if self.codes is None:
            return self.sketch.query(rows)
        return native.query(self.sketch, np.ascontiguousarray(self.codes[rows]), self.native)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return self.predict_rows(np.asarray(rows, dtype=np.int64))

    def measure_norm(self) -> None:
        """mean(s) over the probe rows (the normaliser of the keep probabilities), and with keep=auto the
        keep scale that leaves out at most `drop` of the probe's predicted loss."""
        if self.sketch.total_count <= 0:
            return
        self._norm_stale = False
        s = np.maximum(self.predict_rows(self.probe), 0.0)
        if self.temperature != 1.0:
            s = s ** (1.0 / self.temperature)
        self.norm = float(s.mean())
        if self.norm > 0:
            if not self.fixed_keep:
                self.keep_scale = keep_scale_for(s / self.norm, self.floor, self.drop)
            # the share thinning would keep now, on a uniform sample of the data (auto's second test)
            self.expected_keep = float(np.clip(self.keep_scale * s / self.norm, self.floor, 1.0).mean())

    def _age(self, n_candidates: int) -> None:
        """Decay is per epoch; applied about ten times an epoch (each pass touches every cell). mean(s) is
        re-measured then while thinning, and only when next needed otherwise (the plain walk never needs it)."""
        self.since_decay += n_candidates
        if self.since_decay * 10 >= self.n:
            self.sketch.decay(float(self.spec["decay"]) ** (self.since_decay / self.n))
            self.refreshes += 1
            self.since_decay = 0
            self._norm_stale = True
        if self._norm_stale and self.thinning:
            self.measure_norm()

    def _thinning_now(self, epoch: int) -> bool:
        return self.thinning and epoch >= self.warmup

    def batches(self, epoch: int):
        """One epoch: a fresh permutation walked in order. While thinning is off (warm-up epochs, auto while
        off) each batch is the permutation's next slice, exactly uniform's, with no prediction made; while
        it is on, candidates are predicted and kept or skipped a chunk of CHUNK_BATCHES batches at a time."""
        self._flush()
        order = np.random.default_rng([self.seed, int(epoch), 0xB01]).permutation(self.n).astype(np.int64)
        coin = np.random.default_rng([self.seed, int(epoch), 0x7417])
        self.kept, self.candidates, self.epoch_position = 0, 0, 0
        chunk = self.batch * CHUNK_BATCHES
        buf = None                      # kept (rows, position in the permutation, prediction, weight)
        start = 0
        while start < self.n:
            if buf is None and not self._thinning_now(epoch):
                rows = order[start:start + self.batch]
                self.candidates += rows.size
                self.kept += rows.size
                self._age(rows.size)
                self.epoch_position = start
                start += rows.size
                self.step += 1
                self.draws += rows.size
                self._pending, self._plain_rows = None, rows
                yield rows, (np.ones(rows.size, dtype=np.float32) if self.reweight else None)
                continue
            with self._timer:
                self._flush()
                self._age(0)
                cand = order[start:start + chunk]
                pos = np.arange(start, start + cand.size)
                pred = self.predict_rows(cand)
                if self._thinning_now(epoch):
                    k = self.keep_probabilities(cand, pred)
                    sel = coin.random(cand.size) < k
                    part = (cand[sel], pos[sel], pred[sel], 1.0 / k[sel])
                else:
                    part = (cand, pos, pred, np.ones(cand.size))
                self.candidates += cand.size
                self.kept += part[0].size
                self._age(cand.size)
                start += cand.size
                buf = part if buf is None else tuple(np.concatenate(ab) for ab in zip(buf, part))
            while buf is not None and (buf[0].size >= self.batch or (start >= self.n and buf[0].size)):
                with self._timer:
                    rows, bpos, bpred, bw = (a[:self.batch] for a in buf)
                    buf = None if buf[0].size <= self.batch else tuple(a[self.batch:] for a in buf)
                    self.epoch_position = int(bpos[0])   # the lr clock: where this batch's first row stands
                    self.step += 1
                    self.draws += rows.size
                    self._pending, self._plain_rows = {"rows": rows, "pred": bpred, "w": bw}, None
                    weights = bw.astype(np.float32) if self.reweight else None
                yield rows, weights
        with self._timer:
            self._flush()                  # after the epoch's last observe: a checkpoint here holds no pending losses
        self.epoch_position = self.n

    # -- learning ----------------------------------------------------------------------------------
    def observe(self, rows: np.ndarray, losses: np.ndarray) -> None:
        with self._timer:
            if rows is self._plain_rows:       # the plain walk: learn in groups of DEFER_BATCHES batches
                # a copy: the executor may reuse its loss buffer for the next step
                self._deferred.append((rows, np.array(losses, dtype=np.float64)))
                self._plain_rows = None
                if len(self._deferred) >= DEFER_BATCHES:
                    self._flush()
            else:                              # a thinned batch, or rows not drawn here: learn now
                self._flush()
                self._learn(rows, losses, self._pending)
            self._after_observe()

    def _flush(self) -> None:
        """Learn the deferred batches of the plain walk at once (an example appears once an epoch, and a
        group never spans two epochs, so each row's prediction is still the one made before its loss)."""
        if not self._deferred:
            return
        group, self._deferred = self._deferred, []
        rows = group[0][0] if len(group) == 1 else np.concatenate([g[0] for g in group])
        losses = group[0][1] if len(group) == 1 else np.concatenate([g[1] for g in group])
        self._flushes += 1
        self._learn(rows, losses, None, watch=self._flushes % self.watch_every == 0)

    def _learn(self, rows, losses, pend: dict | None, watch: bool = True) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        losses = np.asarray(losses, dtype=np.float64)
        if self.loss_floor is not None:
            losses = np.maximum(losses - self.loss_floor[rows], 0.0)
        drawn = pend is not None and (pend["rows"] is rows or np.array_equal(pend["rows"], rows))
        total = float(losses.sum())
        if not math.isfinite(total):               # one NaN would poison the sketch: drop those rows
            ok = np.isfinite(losses)
            rows, losses, total = rows[ok], losses[ok], float(losses[ok].sum())
            if drawn:
                pend = {"pred": pend["pred"][ok], "w": pend["w"][ok]}
        if rows.size == 0:
            return
        if drawn:                                  # the prediction each row was drawn with
            self._record(pend["pred"], losses, pend["w"])
        elif watch:                                # the plain walk: a sampled share of the groups
            self._record(self.predict_rows(rows), losses, None)
        if self.codes is None:
            self.sketch.update(rows, losses, total)
        else:
            native.update(self.sketch, self.codes, rows, losses, self.native)

    def _record(self, pred: np.ndarray, losses: np.ndarray, w: np.ndarray | None) -> None:
        """(prediction before the loss was added, loss observed, 1/k) into the ring window."""
        k = min(losses.size, OBSERVED_WINDOW)
        at = self._obs_n % OBSERVED_WINDOW
        first = min(k, OBSERVED_WINDOW - at)            # two contiguous slices: no index arrays
        for dst, src in ((self._obs_pred, pred), (self._obs_true, losses)):
            dst[at:at + first], dst[:k - first] = src[:first], src[first:k]
        if w is None:
            self._obs_w[at:at + first], self._obs_w[:k - first] = 1.0, 1.0
        else:
            self._obs_w[at:at + first], self._obs_w[:k - first] = w[:first], w[first:k]
        self._obs_n += k

    def _after_observe(self) -> None:
        pass

    def observed_correlation(self, last: int = OBSERVED_WINDOW) -> float | None:
        """Weighted rank correlation of the latest `last` recorded (prediction, loss) pairs."""
        m = min(self._obs_n, OBSERVED_WINDOW, last)
        if m < MIN_PAIRS:
            return None
        idx = (self._obs_n - m + np.arange(m)) % OBSERVED_WINDOW if m < OBSERVED_WINDOW else slice(None)
        return weighted_rank_correlation(self._obs_pred[idx], self._obs_true[idx], self._obs_w[idx])

    # -- reporting and checkpoints -----------------------------------------------------------------
    def stats(self) -> dict:
        out = super().stats()
        out.update(kind=self.kind, draw="thin", thinning=bool(self.thinning), keep_scale=float(self.keep_scale),
                   expected_keep=float(self.expected_keep),
                   keep_fraction=self.kept / self.candidates if self.candidates else 1.0,
                   observed_rank_correlation=self.observed_correlation())
        return out

    def state_dict(self) -> dict:
        self._flush()
        return {**super().state_dict(), "kind": self.kind, "flushes": int(self._flushes), "thinning": bool(self.thinning), "norm": float(self.norm),
                "norm_stale": bool(self._norm_stale),
                "keep_scale": float(self.keep_scale), "expected_keep": float(self.expected_keep),
                "since_decay": int(self.since_decay), "obs_pred": self._obs_pred.copy(),
                "obs_true": self._obs_true.copy(), "obs_w": self._obs_w.copy(), "obs_n": int(self._obs_n),
                "kept": int(self.kept), "candidates": int(self.candidates)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.thinning = bool(state["thinning"])
        self.norm, self.since_decay = float(state["norm"]), int(state["since_decay"])
        self._norm_stale = bool(state.get("norm_stale", True))
        self._flushes, self._deferred = int(state.get("flushes", 0)), []
        self.keep_scale, self.expected_keep = float(state["keep_scale"]), float(state["expected_keep"])
        self._obs_pred = np.array(state["obs_pred"], dtype=np.float64)
        self._obs_true = np.array(state["obs_true"], dtype=np.float64)
        self._obs_w = np.array(state["obs_w"], dtype=np.float64)
        self._obs_n = int(state["obs_n"])
        self.kept, self.candidates = int(state["kept"]), int(state["candidates"])


class AutoSampler(ThinningSampler):
    """`sampler auto`: uniform until the sketch's predictions rank the observed losses, then thinning."""

    kind = "auto"

    def __init__(self, spec: dict, dataset, batch: int, seed: int = 0, codes: np.ndarray | None = None,
                 use_native: bool | None = None):
        super().__init__(spec, dataset, batch, seed, codes=codes, use_native=use_native)
        self.thinning = False
        self.check_every = max(1, int(spec["refresh"]))
        self.switches: list[tuple[int, bool, float]] = []     # (step, on?, correlation)
        self.last_correlation: float | None = None

    def _after_observe(self) -> None:
        if self.step % self.check_every:
            return
        self._flush()
        rho = self.observed_correlation(AUTO_PAIRS)
        self.last_correlation = rho
        if rho is None:
            return
        if not self.thinning:
            if rho >= AUTO_ON:
                self.measure_norm()            # what thinning would keep now (only measured when it could switch)
                if self.expected_keep <= 1.0 - AUTO_MIN_SKIP:
                    self._switch(True, rho)
        elif rho < AUTO_OFF:
            self._switch(False, rho)

    def _switch(self, on: bool, rho: float) -> None:
        self.thinning = on
        self.switches.append((int(self.step), bool(on), float(rho)))

    def stats(self) -> dict:
        out = super().stats()
        out.update(switches=len(self.switches))
        return out

    def state_dict(self) -> dict:
        sw = np.array(self.switches, dtype=np.float64).reshape(-1, 3)
        return {**super().state_dict(), "switches": sw}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.switches = [(int(s), bool(o), float(r)) for s, o, r in np.asarray(state["switches"]).reshape(-1, 3)]
