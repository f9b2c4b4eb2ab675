"""When the trainer writes a checkpoint: on a wall-clock interval, every N epochs if asked, at the end,
and when the run is interrupted.

Decisions:
- Checkpoints stay at epoch boundaries: that is the state a resumed run continues from bit-identically
  (runtime/train/trainer.py). What changes is how often: a checkpoint holds the weights and both Adam moments
  (a 262,144 x 128 text model: ~400 MB, hashed and fsynced), and writing one after every short epoch
  took 7.5 of 8.1 s of a text model's run. By default one is written when DEFAULT_INTERVAL_S of wall
  clock have passed since the last one (or since training started), so a crash loses at most about that
  much training plus one epoch, and a run of short epochs writes one at its end only. `checkpoint N`
  in the train block adds one every N epochs; `checkpoint_interval S` sets the interval.
- Interruption (Ctrl-C, SIGINT): a KeyboardInterrupt in the middle of a step would leave weights half
  updated, and the last epoch boundary may not be on disk. So while a checkpointed run trains, the first
  SIGINT only asks the trainer to stop: it finishes the current epoch, writes its checkpoint and then
  raises KeyboardInterrupt. A second SIGINT interrupts at once (the previous checkpoint stays intact:
  savefile writes atomically). Handled only in the main thread (Python delivers signals there).
- An exception raised at an epoch boundary (a callback stopping the run, such as early stopping) also
  writes that epoch's checkpoint first if it is not on disk yet.
"""
from __future__ import annotations

import signal
import sys
import threading
import time

DEFAULT_INTERVAL_S = 300.0


class CheckpointPolicy:
    def __init__(self, train_cfg: dict, clock=None):
        self.every = int(train_cfg.get("checkpoint_every", 0) or 0)
        self.interval = float(train_cfg.get("checkpoint_interval", DEFAULT_INTERVAL_S))
        self.clock = clock or time.monotonic
        self.last = self.clock()

    def due(self, epochs_done: int, final: bool) -> bool:
        if final or (self.every and epochs_done % self.every == 0):
            return True
        return self.clock() - self.last >= self.interval

    def written(self) -> None:
        self.last = self.clock()


class StopRequest:
    """Turns the first SIGINT into a request the trainer honours at the end of the epoch (see above)."""

    def __init__(self, log=None):
        self.requested = False
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self._installed, self._previous = False, None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.log("interrupted: finishing this epoch to write its checkpoint (Ctrl-C again to stop at once)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc):
        if self._installed:
            # a handler installed outside Python reads back as None: put the default one back then
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)
            self._installed = False
        return False
