"""The peer of benchmarks/serve_load.py: a Starlette + PyTorch server of the Amazon-670K architecture
(sparse input -> 256 relu -> 670,091 softmax), taking the same /v1 predict body as `boltc serve`.

  python benchmarks/serve_torch_peer.py --features 135909 --labels 670091   (prints its port)

Design: the plain server a user would write: EmbeddingBag (sum, per-sample weights) for the sparse
input layer, a dense output layer, top-k; one forward at a time (a lock) on torch's intra-op threads,
run off the event loop. Untrained weights (latency does not depend on their values).
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import threading


def build_app(features: int, labels: int, hidden: int = 256, threads: int = 2):
    import numpy as np
    import torch  # optional: the bench extra
    from starlette.applications import Starlette  # optional: the serve extra
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    emb = torch.nn.EmbeddingBag(features, hidden, mode="sum")
    bias = torch.zeros(hidden)
    lin = torch.nn.Linear(hidden, labels)
    lock = threading.Lock()

    def forward(rows, k):
        ids = [i for r in rows for i in r["ids"]]
        vals = [v for r in rows for v in r.get("values", [1.0] * len(r["ids"]))]
        offsets = np.cumsum([0] + [len(r["ids"]) for r in rows[:-1]])
        with lock, torch.no_grad():
            h = torch.relu(emb(torch.tensor(ids, dtype=torch.int64), torch.tensor(offsets, dtype=torch.int64),
                               per_sample_weights=torch.tensor(vals, dtype=torch.float32)) + bias)
            z = lin(h)
            top, idx = torch.topk(z, k)
            scores = torch.exp(top - torch.logsumexp(z, dim=1, keepdim=True))
        return idx.tolist(), scores.tolist()

    async def predict(request):
        body = json.loads(await request.body())
        ids, scores = await run_in_threadpool(forward, body["rows"], int(body.get("top_k", 5)))
        return JSONResponse({"predictions": [{"ids": i, "scores": s} for i, s in zip(ids, scores)]})

    return Starlette(routes=[Route("/v1/models/{name}/predict", predict, methods=["POST"])])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, default=135909)
    ap.add_argument("--labels", type=int, default=670091)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    import uvicorn  # optional: the serve extra
    app = build_app(a.features, a.labels, threads=a.threads)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    print(f"torch peer: listening on http://127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
