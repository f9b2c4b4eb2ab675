"""Model sources shared by the runtime tests (API and CLI): a tiny separable sparse problem."""


def tiny_source(epochs: int = 3, rows: int = 300) -> str:
    """300 features -> 16 relu -> 40 softmax (sparsity 0.25); synthetic, one label per row, no noise."""
    return f"""
model tiny {{
  input  features: sparse(300)
  target labels:   multilabel(40)
  hidden = fc(features, 16, relu)
  scores = fc(hidden, 40, softmax, sparsity=0.25)
  loss    cross_entropy(scores, labels)
  metrics precision@1, precision@3
  train {{
    optimizer adam(lr=1e-2)
    batch     32
    epochs    {epochs}
  }}
  data {{
    train synthetic(rows={rows}, seed=1, nnz=20, proto_nnz=24, max_labels=1, noise=0.0)
    test  synthetic(rows=100, seed=2, nnz=20, proto_nnz=24, max_labels=1, noise=0.0)
  }}
}}
"""
