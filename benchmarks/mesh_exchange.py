"""Payloads between 2 worker processes of one machine: through the sockets against the shared boards
(runtime/distributed/mesh.py), in one run, alternated.

    python benchmarks/mesh_exchange.py [--meetings 300]

Two processes exchange, in a loop, the payloads one update of the distributed benchmark's models
moves between the workers of one machine: the factors of the synth100k output (128 examples x 500
active ids and logits' gradients + 128 x 256 input rows: 643 KB each way), the owners' shares of the
output's input gradient (256 x 256 floats: 256 KB) and a barrier. Per meeting and worker: CPU
microseconds of the calling thread and of the whole process (the socket path sends large payloads on
a helper thread) and wall microseconds. Shapes only: the arrays are zeros. Writes
benchmarks/results/mesh_exchange.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from multiprocessing import Process, Queue
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RESULTS  # noqa: E402

from boltc.runtime.distributed.mesh import Mesh  # noqa: E402

PAYLOADS = {
    "factors (643 KB)": lambda: {"ids": np.zeros((128, 500), np.int32), "g": np.zeros((128, 500), np.float32),
                                 "x": np.zeros((128, 256), np.float32)},
    "input-gradient share (256 KB)": lambda: np.zeros((256, 256), np.float32),
    "barrier": lambda: None,
}


def _worker(rank: int, board: bool, meetings: int, prefix: str, out: Queue) -> None:
    m = Mesh(prefix, rank, 2, timeout=60, board=board)
    m.connect()
    rows = {}
    for name, make in PAYLOADS.items():
        payload = make()
        m.barrier()
        c0, p0, w0 = time.thread_time(), time.process_time(), time.perf_counter()
        for _ in range(meetings):
            m.exchange([payload, payload])
        rows[name] = {k: v / meetings * 1e6 for k, v in (("thread_cpu_us", time.thread_time() - c0),
                                                          ("process_cpu_us", time.process_time() - p0),
                                                          ("wall_us", time.perf_counter() - w0))}
    m.close()
    out.put((rank, rows))


def measure(board: bool, meetings: int) -> dict:
    q: Queue = Queue()
    prefix = f"boltc-bench-mesh-{os.getpid()}-{int(board)}-{time.monotonic_ns()}"
    ps = [Process(target=_worker, args=(r, board, meetings, prefix, q)) for r in range(2)]
    for p in ps:
        p.start()
    got = dict(q.get() for _ in ps)
    for p in ps:
        p.join()
    return {name: {k: (got[0][name][k] + got[1][name][k]) / 2 for k in got[0][name]} for name in PAYLOADS}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meetings", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    runs = []
    for r in range(args.repeats):
        for board in (False, True):
            load = os.getloadavg()[0]
            runs.append({"repeat": r, "board": board, "load": load, "rows": measure(board, args.meetings)})
    print(f"python benchmarks/mesh_exchange.py {' '.join(sys.argv[1:])}; {platform.machine()}, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| repeat | payload | path | load avg | thread CPU us | process CPU us | wall us |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        for name, row in run["rows"].items():
            print(f"| {run['repeat']} | {name} | {'boards' if run['board'] else 'sockets'} | {run['load']:.1f} | "
                  f"{row['thread_cpu_us']:.0f} | {row['process_cpu_us']:.0f} | {row['wall_us']:.0f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "mesh_exchange.json").write_text(json.dumps({
        "command": "python benchmarks/mesh_exchange.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
