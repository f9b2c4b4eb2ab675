"""`boltc serve model.boltc [name=more.boltc ...]`: serve saved models over HTTP (docs/serve.md).

Routes: the Open Inference Protocol v2 (metadata, health, /v2/models/{name}/infer, repository load),
`POST /v1/models/{name}/predict`, `/metrics`. Binds 127.0.0.1 unless --host says otherwise.
Decision: one process and one inference thread; --threads sets the native kernels' threads, which
already use every core on one batch. More processes would each hold a copy of the weights and split
the batches that make serving fast.
"""
from __future__ import annotations

from boltc.errors import BoltError

HELP = "serve saved models over HTTP (Open Inference Protocol v2 + /v1 predict)"


def add_arguments(p) -> None:
    p.add_argument("models", nargs="+", metavar="[NAME=]MODEL.boltc",
                   help="saved models; a model's name is its file's stem unless given as name=path")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8080, help="port (0: a free one, printed at start)")
    p.add_argument("--token-file", default=None,
                   help="file holding a bearer token that every route but the health checks requires")
    p.add_argument("--max-batch", type=int, default=64, help="most rows in one native predict call")
    p.add_argument("--batch-wait-ms", type=float, default=1.0,
                   help="longest wait for more rows while other requests are in flight")
    p.add_argument("--batch-sparse", action="store_true",
                   help="batch sparse-inference requests across clients too (see docs/serve.md)")
    p.add_argument("--max-queue", type=int, default=4096,
                   help="rows waiting at most; more are refused with 503 and Retry-After")
    p.add_argument("--max-rows", type=int, default=1024, help="rows per request at most")
    p.add_argument("--max-body-bytes", type=int, default=8 << 20, help="request body size limit")
    p.add_argument("--watch", type=float, default=0.0, metavar="SECONDS",
                   help="poll the model files this often and reload a changed one (0: off)")
    p.add_argument("--drain-seconds", type=float, default=30.0,
                   help="on SIGTERM, how long requests in flight may take to finish")
    p.add_argument("--backend", choices=("native", "numpy"), default=None,
                   help="kernels to run (default: native when available, else numpy)")
    p.add_argument("--threads", type=int, default=None, help="native kernel threads (0 = all cores)")


def run(args) -> int:
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise BoltError(f"boltc serve needs the serve extra ({e.name} is missing): "
                        "pip install 'boltc[serve]'") from None
    # the server's modules import the serve extra (checked just above): loaded only for `boltc serve`
    from boltc.serve import server  # optional: serve extra
    from boltc.serve.app import Settings, build_app  # optional: serve extra
    from boltc.serve.models import ModelSet, parse_model_args  # optional: serve extra
    for opt in ("max_batch", "max_queue", "max_rows", "max_body_bytes"):
        if getattr(args, opt) < 1:
            raise BoltError(f"--{opt.replace('_', '-')} must be at least 1")
    if args.batch_wait_ms < 0 or args.watch < 0:
        raise BoltError("--batch-wait-ms and --watch must not be negative")
    token = None
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise BoltError(f"{args.token_file}: cannot read the token file ({e.strerror})") from None
        if not token:
            raise BoltError(f"{args.token_file}: the token file is empty")
    models = ModelSet(backend=args.backend, threads=args.threads)
    for name, path in parse_model_args(args.models):
        m = models.add(name, path)
        if m.model.backend_note:
            print(m.model.backend_note)
        print(f"boltc serve: {name!r} from {path} ({m.schema.kind} input, {m.classes} classes, "
              f"{m.model.backend}) loaded in {m.load_seconds:.2f} s", flush=True)
    settings = Settings(max_batch=args.max_batch, max_wait_ms=args.batch_wait_ms, max_queue=args.max_queue,
                        max_rows=args.max_rows, max_body=args.max_body_bytes, token=token, watch=args.watch, batch_sparse=args.batch_sparse)
    return server.run(build_app(models, settings), args.host, args.port, args.drain_seconds)
