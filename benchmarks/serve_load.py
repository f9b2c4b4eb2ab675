"""`boltc serve` under load: p50, p99 and requests/s at concurrency 1, 16 and 64, driven by wrk (a real
HTTP load generator, from the distribution's packages) on loopback, against a Starlette + PyTorch server
of the same 670k architecture measured in the same run.

  python benchmarks/serve_load.py [--seconds 5] [--quick]

Models (SYNTHETIC shapes, no download): models/quickstart.bolt trained one epoch on its synthetic data,
dense inference, requests batched across clients; models/amazon670k.bolt compiled with `boltc compile -o`
and not trained (serving latency does not depend on the weights' values), sparse inference, served
twice: one native call per request (the default, answers bit-identical to Model.predict) and with
--batch-sparse (requests batched; see docs/serve.md).
The files are cached in $BOLTC_BENCH_CACHE (default ~/.cache/boltc-bench; the 670k one takes minutes
to build and ~3 GB). Every request is one row: {"rows": [{"ids", "values"}], "top_k": 5}; wrk rotates
over 64 different rows. wrk, the servers and anything else on the machine share its cores; "tN" is
`boltc serve --threads N` (--threads 1,2 compares both). The in-process rows time Model.predict of one
row in the benchmark's own process at the same moment: the floor the server's latency stands on.
"server CPU ms/req" is the server process's CPU time (all threads) per answered request during a cell:
what a request costs whatever else the machine runs (2 free cores serve about 2000 / it requests/s).
Goals: 670k p50 at concurrency 1 < 2 ms end to end; at concurrency 64 >= 10x the PyTorch server's
requests/s with p99 < 100 ms; quickstart >= 3,000 requests/s.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import table, write_json  # noqa: E402

import boltc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 16, 64)


def cache_dir() -> Path:
    d = Path(os.environ.get("BOLTC_BENCH_CACHE") or Path.home() / ".cache" / "boltc-bench")
    d.mkdir(parents=True, exist_ok=True)
    return d


def model_file(name: str) -> Path:
    """The saved model, built once (rebuilt when its .bolt file is newer)."""
    src = ROOT / "models" / f"{name}.bolt"
    out = cache_dir() / f"{name}.boltc"
    if out.exists() and out.stat().st_mtime > src.stat().st_mtime:
        return out
    t = time.perf_counter()
    tmp = out.with_suffix(".tmp.boltc")
    if name == "quickstart":
        m = boltc.compile(str(src))
        m.fit(epochs=1, progress=False)
        m.save(str(tmp))
    else:
        subprocess.run([sys.executable, "-m", "boltc.cli", "compile", str(src), "-o", str(tmp)], check=True,
                       stdout=subprocess.DEVNULL)
    os.replace(tmp, out)
    print(f"built {out} in {time.perf_counter() - t:.0f} s", flush=True)
    return out


class Proc:
    """A server process; its URL comes from its 'listening on' line."""

    def __init__(self, cmd: list[str], timeout: float = 900):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.url, self.lines, found = None, [], threading.Event()

        def pump():
            for line in self.proc.stderr:
                self.lines.append(line)
                m = re.search(r"listening on (http://\S+)", line)
                if m:
                    self.url = m.group(1)
                    found.set()
            found.set()
        threading.Thread(target=pump, daemon=True).start()
        found.wait(timeout)
        if not self.url:
            self.stop()
            raise RuntimeError(f"{cmd[:4]} did not start:\n" + "".join(self.lines[-20:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bodies(features: int, nnz: int, sparse: bool | None, n: int = 64, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = np.sort(rng.choice(features, nnz, replace=False)).tolist()
        vals = np.round(rng.uniform(0.1, 1.0, nnz), 3).tolist()
        body = {"rows": [{"ids": ids, "values": vals}], "top_k": 5}
        if sparse is not None:
            body["sparse"] = sparse
        out.append(json.dumps(body, separators=(",", ":")))
    return out


LUA = """
local bodies = {%s}
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n %% #bodies + 1
  return wrk.format(nil, nil, nil, bodies[n])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKJSON {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"errors\\": %%d, \\"non2xx\\": %%d, \\"p50_us\\": %%d, \\"p99_us\\": %%d}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk(url: str, script: str, conc: int, seconds: float) -> dict:
    cmd = ["wrk", "-t", str(min(conc, 2)), "-c", str(conc), "-d", f"{max(1, round(seconds))}s", "--timeout", "10s", "-s", script, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"WRKJSON (\{.*\})", out)
    if not m:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    r = json.loads(m.group(1))
    return {"req/s": round(r["requests"] / (r["duration_us"] / 1e6), 1), "p50 ms": round(r["p50_us"] / 1e3, 3),
            "p99 ms": round(r["p99_us"] / 1e3, 3), "requests": r["requests"], "failed": r["errors"] + r["non2xx"]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_rows(url: str) -> tuple[float, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    get = lambda n: float(re.search(rf"^{n} (\S+)$", text, re.M).group(1))
    return get("boltc_batch_rows_sum"), get("boltc_batch_rows_count")


def in_process(qs: Path, big: Path, reps: int = 300) -> list[dict]:
    """Model.predict of one row in this process (no HTTP, no server), p50/p99 over `reps` calls: how much
    of the server's latency at concurrency 1 is the model itself at this moment on this machine."""
    out = []
    for label, path, features, nnz, sparse in (("quickstart", qs, 5000, 30, None), ("670k", big, 135909, 40, True)):
        m = boltc.load(str(path), threads=1)
        xs = [json.loads(b)["rows"][0] for b in bodies(features, nnz, sparse)]
        mats = [sp.csr_matrix((np.float32(r["values"]), (np.zeros(nnz, int), r["ids"])), shape=(1, features))
                for r in xs]
        m.predict(mats[0], top_k=5, sparse=sparse)
        ts = []
        for i in range(reps):
            t = time.perf_counter()
            m.predict(mats[i % len(mats)], top_k=5, sparse=sparse)
            ts.append(time.perf_counter() - t)
        out.append({"system": f"in-process Model.predict {label} t1", "concurrency": 1,
                    "p50 ms": round(float(np.median(ts)) * 1e3, 3),
                    "p99 ms": round(float(np.percentile(ts, 99)) * 1e3, 3)})
        print(out[-1], flush=True)
        del m
        gc.collect()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0, help="wrk duration per cell")
    ap.add_argument("--quick", action="store_true", help="2-second cells")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--threads", default="1", help="boltc serve --threads values to compare (comma-separated)")
    a = ap.parse_args(argv)
    # a SIGTERM (timeout, Ctrl-C from a parent) must still run the `finally` that stops the servers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not shutil.which("wrk"):
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    seconds = 2.0 if a.quick else a.seconds
    qs, big = model_file("quickstart"), model_file("amazon670k")
    tmp = Path(tempfile.mkdtemp(prefix="serve_load"))
    systems = [  # (label, serve arguments, model name, request bodies)
        ("boltc quickstart (dense, batched)", [f"quickstart={qs}"], "quickstart", bodies(5000, 30, None)),
        ("boltc 670k (sparse)", [f"amazon670k={big}"], "amazon670k", bodies(135909, 40, True)),
        ("boltc 670k (sparse, --batch-sparse)", [f"amazon670k={big}", "--batch-sparse"], "amazon670k",
         bodies(135909, 40, True)),
    ]
    procs, rows = [], []
    try:
        for label, args, name, bs in systems:
            for t in [int(x) for x in a.threads.split(",")]:
                p = Proc([sys.executable, "-m", "boltc.cli", "serve", *args, "--port", "0", "--threads", str(t)])
                procs.append((f"{label} t{t}", p, f"{p.url}/v1/models/{name}/predict", bs))
        if not a.no_torch:
            try:
                import torch  # noqa: F401  # optional: the bench extra
                p = Proc([sys.executable, str(Path(__file__).parent / "serve_torch_peer.py")])
                procs.append(("Starlette + PyTorch 670k (dense)", p, f"{p.url}/v1/models/x/predict",
                              bodies(135909, 40, None)))
            except ImportError:
                print("torch not installed: the PyTorch peer is skipped", file=sys.stderr)
        for i, (label, p, url, bs) in enumerate(procs):
            script = tmp / f"s{i}.lua"
            script.write_text(LUA % ",".join(f"[==[{b}]==]" for b in bs))
            wrk(url, str(script), 4, 1.0)                       # warm-up
        rows += in_process(qs, big)                              # the same moment's floor, without HTTP
        for conc in CONCURRENCY:                                 # the systems alternate at each concurrency
            for i, (label, p, url, _) in enumerate(procs):
                before = batch_rows(p.url) if label.startswith("boltc") else None
                cpu0 = cpu_seconds(p.proc.pid)
                r = wrk(url, str(tmp / f"s{i}.lua"), conc, seconds)
                # the server's own CPU per answered request: what it costs, whatever else runs
                r["server CPU ms/req"] = round((cpu_seconds(p.proc.pid) - cpu0) * 1e3 / max(1, r["requests"]), 3)
                if before:
                    after = batch_rows(p.url)
                    r["rows/batch"] = round((after[0] - before[0]) / max(1.0, after[1] - before[1]), 1)
                rows.append({"system": label, "concurrency": conc, **r})
                print(f"{label:36s} c={conc:<3d} {r}", flush=True)
    finally:
        for _, p, _, _ in procs:
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    torch_rps = {r["concurrency"]: r["req/s"] for r in rows if r["system"].startswith("Starlette")}
    for r in rows:
        if r["system"].startswith("boltc 670k") and torch_rps.get(r["concurrency"]):
            r["x PyTorch req/s"] = round(r["req/s"] / torch_rps[r["concurrency"]], 1)
    cols = ["system", "concurrency", "req/s", "p50 ms", "p99 ms", "failed", "rows/batch", "server CPU ms/req",
            "x PyTorch req/s"]
    print(table(rows, cols))
    path = write_json("serve_load", {"seconds_per_cell": seconds, "rows": rows, "load_generator": "wrk",
                                     "goals": {"670k_p50_c1_ms": 2, "670k_c64_x_pytorch": 10,
                                               "670k_c64_p99_ms": 100, "quickstart_req_s": 3000}})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
