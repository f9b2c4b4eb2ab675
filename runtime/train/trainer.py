"""The trainer: epochs of batches, progress, validation metrics, checkpoints and exact resume.

One step: the sampler draws rows -> `ex.train_step(batch, lr)` (forward, backward, lazy optimizer) ->
`ex.after_step(...)` (LSH table upkeep on schedule) -> `sampler.observe(rows, losses)`.

Reproducibility (decisions):
- Every random choice is seeded from the plan's train seed and a counter that a checkpoint saves: the
  sampler's order from (seed, epoch), the executor's active sets from (seed, state.step), LSH rebuilds
  from (hash seed, build count). No wall-clock-driven decision changes the numbers.
- So a checkpoint taken at the end of an epoch (weights, Adam moments, step, hash tables with their
  counters, sampler state, history) is all a resumed run needs to continue bit-identically
  (tests/test_trainer.py checks this against an uninterrupted run). Which epoch ends get one (a
  wall-clock interval, every N epochs, the end, an interruption): runtime/train/checkpoints.py.
- Checkpoints are whole `.boltc` files plus an `optimizer/` part, written atomically (savefile), so a run
  killed while writing keeps the previous checkpoint intact.
Validation runs after each epoch with dense inference (and sparse inference too for LSH-sparse outputs
when `train.inference` is "sparse" or "both"); evaluation never changes the model or any counter.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from boltc import debug
from boltc.errors import BoltValidationError
from boltc.runtime import savefile
from boltc.runtime.data.dataset import Dataset
from boltc.runtime.exec.optim import lr_at
from boltc.runtime.sampler import choose
from boltc.runtime.train import blend as blend_mod, class_weights, metrics as metrics_mod, ranking
from boltc.runtime.train.checkpoints import CheckpointPolicy, StopRequest
from boltc.runtime.train.early_stop import EarlyStopping, watched_metric

DEFAULT_METRICS = ("precision@1", "precision@3", "precision@5")
EVAL_BATCH = 1024


class _UniformSampler:
    """Fallback with the runtime.sampler interface (CONTRACTS.md section 8): a seeded permutation per epoch."""

    kind = "uniform"

    def __init__(self, n_rows: int, batch: int, seed: int = 0):
        self.n, self.batch, self.seed = int(n_rows), int(batch), int(seed)

    def batches(self, epoch: int):
        order = np.random.default_rng([self.seed, int(epoch), 0xB01]).permutation(self.n).astype(np.int64)
        for s in range(0, self.n, self.batch):
            yield order[s:s + self.batch], None

    def observe(self, rows, losses) -> None:
        pass

    def stats(self) -> dict:
        return {"kind": "uniform"}

    def state_dict(self) -> dict:
        return {"kind": "uniform"}

    def load_state_dict(self, state: dict) -> None:
        pass


def make_sampler(spec: dict | None, dataset: Dataset, batch: int, seed: int):
    return choose.make_sampler(spec, dataset, batch, seed)


def metric_names(plan: dict) -> list[str]:
    names = [str(m) for m in plan.get("metrics") or []]
    if (plan.get("target") or {}).get("kind") == "binary":
        return names or ["accuracy"]
    return names or list(DEFAULT_METRICS)


@debug.stage("evaluate", part="evaluate")
def evaluate(executor, dataset: Dataset, names, sparse: bool = False, batch: int = EVAL_BATCH,
             binary: bool = False, exclude_seen: bool = False, confusion: bool = False,
             blended: bool = True) -> dict[str, float]:
    """Metrics (percent) of `executor` on a labelled dataset; inference only. `exclude_seen`: each row's
    own feature ids are left out of the ranking (runtime/ranking.py); `confusion`: the result also holds
    "confusion", the (true, predicted) counts, most frequent first; `blended=False`: the network's own
    ranking, without a `blend` (runtime/train/blend.py)."""
    acc = metrics_mod.MetricAccumulator(names, binary=binary, confusion=confusion)
    t0 = time.perf_counter()
    if getattr(dataset, "streaming", False):
        batches = dataset.eval_batches(batch)
    else:
        batches = (dataset.take(np.arange(s, min(s + batch, dataset.rows))) for s in range(0, dataset.rows, batch))
    for b in batches:
        ids, scores = ranking.predict(executor, b, acc.kmax, sparse=sparse, exclude_seen=exclude_seen,
                                      blended=blended)
        acc.add(ids, b.labels, scores)
    out = acc.result()
    if confusion:
        out["confusion"] = acc.confusion.rows()
    dt = time.perf_counter() - t0
    out["examples_per_s"] = dataset.rows / dt if dt > 0 else 0.0
    return out


def epoch_step(sampler, bi: int, bpe: int) -> int:
    """The lr schedule's position within the epoch: a thinning sampler takes fewer steps per epoch, so
    its position is the share of the epoch's permutation walked (`epoch_position` of its N), not the
    step count (the two agree when nothing is skipped)."""
    pos = getattr(sampler, "epoch_position", None)
    return bi if pos is None else min(bpe - 1, int(pos) * bpe // int(sampler.n))


class Trainer:
    def __init__(self, plan: dict, state, executor, sampler=None, *, source: str = "",
                 checkpoint: str | Path | None = None, progress: bool = True, log=None,
                 checkpoint_at_end: bool = True, epoch_lines: bool | None = None):
        self.plan, self.state, self.ex, self.sampler = plan, state, executor, sampler
        self.train_cfg = plan.get("train", {})
        self.source = source
        self.checkpoint = Path(checkpoint) if checkpoint else None
        # False when the caller saves the finished model itself and discards the checkpoint (boltc run)
        self.checkpoint_at_end = checkpoint_at_end
        self.progress = progress
        # the per-epoch lines are the run's record: `--no-progress` drops the bar, not them
        # (None: printed when the bar is, as the Python API's fit(progress=False) stays quiet)
        self.epoch_lines = progress if epoch_lines is None else bool(epoch_lines)
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.history: dict = {"epochs": [], "step": int(state.step)}
        self.epochs_done = 0
        self.binary = (plan.get("target") or {}).get("kind") == "binary"
        self.early: EarlyStopping | None = None          # `epochs auto` / `patience N` (early_stop.py)
        self.class_weights = None          # per-class weights, resolved on the training set by fit()
        self.members: list = []            # `ensemble N`: finished members' weights, kept in checkpoints

    # ------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: str | Path | None = None) -> None:
        path = Path(path or self.checkpoint)
        extra = {"epochs_done": self.epochs_done,
                 "sampler": self.sampler.state_dict() if self.sampler is not None else None}
        if self.early is not None:
            extra["early_stopping"] = self.early.state_dict()
        self.history["step"] = int(self.state.step)
        saved = savefile.state_to_saved(self.source, self.plan, self.state, self.history, extra, with_optimizer=True)
        saved.members = list(self.members)
        savefile.save_model(path, saved)

    def restore(self, saved: savefile.SavedModel) -> None:
        """Continue from a checkpoint (the state was already rebuilt from it by the caller)."""
        opt = saved.optimizer or {}
        self.epochs_done = int(opt.get("epochs_done", 0))
        self.history = dict(saved.history or {"epochs": []})
        self._sampler_state = opt.get("sampler")
        self._early_state = opt.get("early_stopping")

    # ------------------------------------------------------------ the loop
    def _measure_rank_correlation(self, train, epoch: int) -> None:
        """Every RANK_CORR_EVERY epochs: rank correlation of the adaptive sampler's predicted losses with
        true losses on a random subset. Its own generator, so training's random streams are untouched."""
        if getattr(self.sampler, "kind", "uniform") == "uniform" or (epoch + 1) % RANK_CORR_EVERY \
                or self.plan["target"]["kind"] == "binary":
            return
        rng = np.random.default_rng([int(self.plan["train"].get("seed", 0)), epoch, 7919])
        rows = np.sort(rng.choice(train.rows, size=min(RANK_CORR_ROWS, train.rows), replace=False))
        # in chunks: a dense forward of 512 rows of a 670k-wide output would hold 1.4 GB of scores
        losses = np.concatenate([true_losses(self.ex, self.plan, train.take(rows[i:i + RANK_CORR_CHUNK]))
                                 for i in range(0, rows.size, RANK_CORR_CHUNK)])
        self.sampler.rank_correlation(losses, rows)

    def _epoch_batches(self, train, epoch: int, batch: int, seed: int):
        """(row ids, Batch) of one epoch: the sampler's draws, or a streamed file's own order; each
        batch's example weights carry the class weights (runtime/train/class_weights.py)."""
        for rows, b in self._drawn_batches(train, epoch, batch, seed):
            if self.class_weights is not None:
                w = class_weights.example_weights(self.class_weights, b.labels, self.plan["target"])
                b.weights = w if b.weights is None else (np.asarray(b.weights, np.float32) * w).astype(np.float32)
            yield rows, b

    def _drawn_batches(self, train, epoch: int, batch: int, seed: int):
        if getattr(train, "streaming", False):
            yield from train.batches(epoch, batch, seed)
            return
        for rows, weights in self.sampler.batches(epoch):
            b = train.take(rows)
            if weights is not None:
                b.weights = np.asarray(weights, dtype=np.float32)
            yield rows, b

    @debug.stage("train", part="train")
    def fit(self, train: Dataset, validation: Dataset | None = None, epochs: int | None = None,
            callbacks=()) -> dict:
        cfg = self.train_cfg
        epochs = int(epochs if epochs is not None else cfg.get("epochs", 1))
        batch = int(cfg.get("batch", 256))
        seed = int(cfg.get("seed", 0))
        streaming = getattr(train, "streaming", False)
        kind = (cfg.get("sampler") or {}).get("kind", "uniform")
        if streaming and kind == "auto" and self.sampler is None:
            # auto means "adaptive only where it pays"; a streamed file cannot be revisited out of order
            self.log(f"sampler auto: {train.source} is streamed, so it trains with the uniform sampler "
                     "(the adaptive sampler needs the training set in memory)")
        elif streaming and kind != "uniform":
            raise BoltValidationError(
                f"sampler {cfg['sampler']['kind']} needs the training set in memory, but {train.source} is "
                "streamed (too large for memory, or stream=true): use the uniform sampler, or a smaller file")
        spec = cfg.get("class_weights")
        if spec == "balanced" and streaming:
            raise BoltValidationError(f"class_weights balanced counts the classes of the training set, but "
                                      f"{train.source} is streamed: give one weight per class instead")
        self.class_weights = class_weights.resolve(spec, None if streaming else train.labels, self.plan["target"])
        if self.sampler is None:
            self.sampler = (_UniformSampler(train.rows, batch, seed) if streaming
                            else make_sampler(cfg.get("sampler"), train, batch, seed))
        upkeep = getattr(self.ex, "upkeep", None)
        if upkeep is not None and hasattr(upkeep, "set_label_frequency"):
            # the negatives' weights from the data's label counts (runtime/lsh/upkeep.py); a streamed file's
            # are not known up front, so it keeps the running counts
            classes = int((self.plan.get("target") or {}).get("classes", 0))
            upkeep.set_label_frequency(None if streaming or train.labels is None else
                                       np.bincount(train.labels.indices, minlength=classes))
        state = getattr(self, "_sampler_state", None)
        if state:
            self.sampler.load_state_dict(state)
            self._sampler_state = None
        stats0 = self.sampler.stats() if hasattr(self.sampler, "stats") else {}
        self._sampler_overhead = float(stats0.get("overhead_s", 0.0))
        bpe = math.ceil(train.rows / batch)
        total_steps = epochs * bpe
        base_lr = float(cfg.get("lr", 1e-3))
        names = metric_names(self.plan)
        out_layer = next((l for l in self.plan["layers"] if l["name"] == self.plan["output"]), {})
        inference = cfg.get("inference", "dense")
        want_sparse = bool(out_layer.get("hash")) and inference in ("sparse", "both")
        want_dense = not want_sparse or inference == "both"
        blending = blend_mod.settings(self.plan) is not None and "ridge" in getattr(self.state, "blend", {})
        patience = cfg.get("patience")
        if patience:
            if validation is None or validation.labels is None:
                raise BoltValidationError(
                    "`epochs auto` and `patience` stop on a validation metric, but there is no validation data: "
                    "give validation data, or keep a holdout share > 0 (train block `holdout`)")
            if self.early is None:
                self.early = EarlyStopping(int(patience), watched_metric(names))
                if getattr(self, "_early_state", None):
                    self.early.load_state_dict(self._early_state)
        stopped = bool(self.early and self.early.done(self.epochs_done))
        # early stopping: how many epochs run is not known up front, so the bar counts rows only
        bar = None if stopped else _progress(
            self.progress, total=None if self.early else (epochs - self.epochs_done) * train.rows)
        policy = CheckpointPolicy(cfg)
        stop = StopRequest(log=(lambda msg: bar.write(msg, file=sys.stderr)) if bar is not None else self.log)
        try:
            if self.checkpoint is not None:
                stop.__enter__()
            for epoch in range(self.epochs_done, epochs if not stopped else self.epochs_done):
                t0 = time.perf_counter()
                up0 = getattr(self.ex, "upkeep_seconds", 0.0)
                loss_sum, n_seen, lr = 0.0, 0, base_lr
                for bi, (rows, b) in enumerate(self._epoch_batches(train, epoch, batch, seed)):
                    lr = lr_at(base_lr, cfg.get("schedule"), epoch * bpe + epoch_step(self.sampler, bi, bpe), total_steps, bpe)
                    losses = self.ex.train_step(b, lr)
                    self.ex.after_step(epoch, bi, bpe)
                    self.sampler.observe(rows, losses)
                    loss_sum += float(np.sum(losses, dtype=np.float64))
                    n_seen += len(rows)
                    if bar is not None:
                        bar.update(len(rows))
                        if bi % 8 == 0:
                            bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{loss_sum / n_seen:.4f}", refresh=False)
                seconds = time.perf_counter() - t0
                upkeep = getattr(self.ex, "upkeep_seconds", 0.0) - up0
                record = {"epoch": epoch + 1, "loss": loss_sum / max(n_seen, 1), "seconds": seconds,
                          "examples_per_s": n_seen / seconds if seconds > 0 else 0.0,
                          "upkeep_seconds": upkeep, "upkeep_share": upkeep / seconds if seconds > 0 else 0.0,
                          "lr": lr}
                if validation is not None and validation.labels is not None:
                    if want_dense:
                        record["validation"] = evaluate(self.ex, validation, names, sparse=False, binary=self.binary)
                    if want_sparse:
                        record["validation_sparse"] = evaluate(self.ex, validation, names, sparse=True, binary=self.binary)
                    if blending:        # what early stopping watches: the network alone (early_stop.py)
                        record["validation_network"] = evaluate(self.ex, validation, names, sparse=not want_dense,
                                                                binary=self.binary, blended=False)
                self._measure_rank_correlation(train, epoch)
                sampler_stats = self.sampler.stats() if hasattr(self.sampler, "stats") else {}
                record["sampler"] = {k: v for k, v in sampler_stats.items() if isinstance(v, (int, float, str))}
                overhead = float(sampler_stats.get("overhead_s", 0.0))       # cumulative in the sampler
                record["sampler_share"] = (overhead - self._sampler_overhead) / seconds if seconds > 0 else 0.0
                self._sampler_overhead = overhead
                if self.early is not None:
                    stopped = self.early.update(record, self.state)
                    record["best_epoch"] = self.early.best_epoch
                self.history.setdefault("epochs", []).append(record)
                self.epochs_done = epoch + 1
                written = self.checkpoint is None
                final = self.epochs_done == epochs or stopped         # early stopping ends the run here
                if not written and (stop.requested or policy.due(self.epochs_done, final and self.checkpoint_at_end)):
                    self.save_checkpoint()
                    policy.written()
                    written = True
                line = format_record(record)
                if bar is not None:
                    bar.write(line)
                elif self.epoch_lines:
                    self.log(line)
                if stop.requested and not final:
                    if not written:             # Ctrl-C came after this epoch's checkpoint decision
                        self.save_checkpoint()
                    raise KeyboardInterrupt
                try:
                    for cb in callbacks:
                        cb(self, record)
                except BaseException:
                    if not written:             # a callback ended the run here: keep this epoch
                        self.save_checkpoint()
                    raise
                if stopped:
                    break
        finally:
            stop.__exit__()
            if bar is not None:
                bar.close()
        if self.early is not None:
            self.early.restore(self.state)
            self.history["early_stopping"] = self.early.summary(self.epochs_done, stopped)
            if self.progress and self.early.best is not None:
                how = (f"stopped after epoch {self.epochs_done}: no better validation {self.early.metric} for "
                       f"{self.early.patience} epochs" if stopped else f"ran all {self.epochs_done} epochs")
                self.log(f"{how}; kept epoch {self.early.best_epoch} ({self.early.metric} {self.early.best:.2f})")
        self.history["step"] = int(self.state.step)
        return self.history


def format_record(r: dict) -> str:
    parts = [f"epoch {r['epoch']}", f"loss {r['loss']:.4f}", f"{r['examples_per_s']:,.0f} ex/s",
             f"{r['seconds']:.1f}s", f"upkeep {100 * r['upkeep_share']:.1f}%"]
    smp = r.get("sampler") or {}
    if smp.get("kind") not in (None, "uniform") and r.get("seconds"):
        parts.append(f"sampler {100 * r.get('sampler_share', 0.0):.1f}%")
        if smp.get("rank_correlation") is not None:
            parts.append(f"loss rank corr {smp['rank_correlation']:.2f}")
    for key, tag in (("validation", ""), ("validation_sparse", " sparse"), ("validation_network", " network")):
        for k, v in (r.get(key) or {}).items():
            if k != "examples_per_s":
                parts.append(f"{k}{tag} {v:.2f}")
    if r.get("best_epoch") == r["epoch"]:
        parts.append("(best so far)")
    return "  ".join(parts)


RANK_CORR_EVERY = 2        # epochs between checks of the sampler's predictions (issue 6)
RANK_CORR_ROWS = 512       # random training rows whose true loss is computed for the check
RANK_CORR_CHUNK = 64       # rows per dense forward (bounds the (rows, output width) score matrix)


def true_losses(ex, plan: dict, batch) -> np.ndarray | None:
    """Per-example loss of the dense model (the loss the trainer minimises), without a training step:
    cross entropy against the normalised multi-hot target, or with `binary_cross_entropy` the sum over
    labels of the sigmoid's. None for binary targets (not what the sketch ranks)."""
    if plan["target"]["kind"] == "binary" or batch.labels is None:
        return None
    out = np.asarray(ex.forward(batch, mode="dense")[plan["output"]], dtype=np.float64)
    if plan.get("loss") == "binary_cross_entropy":          # out: the sigmoid of every label
        y = batch.labels.tocsr().toarray() > 0
        return -np.log(np.maximum(np.where(y, out, 1.0 - out), 1e-30)).sum(axis=1)
    if not np.allclose(out.sum(axis=1), 1.0, atol=1e-3):          # logits -> probabilities
        out = np.exp(out - out.max(axis=1, keepdims=True))
        out /= out.sum(axis=1, keepdims=True)
    y = batch.labels.tocsr()
    per_row = np.diff(y.indptr)
    owner = np.repeat(np.arange(y.shape[0]), per_row)
    logp = np.log(np.maximum(out[owner, y.indices], 1e-30))
    return -np.bincount(owner, weights=logp, minlength=y.shape[0]) / np.maximum(per_row, 1)


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    return tqdm(total=total, unit="ex", unit_scale=True, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5, leave=False)
