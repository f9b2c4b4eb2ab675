"""Model sources and fixture writers shared by the runtime tests (API, CLI, text pipeline): a tiny separable
sparse problem, a small text classifier."""
import signal
import subprocess
import time

from boltc.runtime import savefile



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


def text_source(text_options: str, classes: int | None = None, label_column: str = "label", hidden: int = 8,
                lr: float = 0.01, batch: int = 16, epochs: int = 8) -> str:
    """A text classifier: one text input `doc` -> `hidden` relu -> a sigmoid score and binary cross
    entropy (classes None: a binary target), or a softmax over `classes` and cross entropy (label(n));
    metric accuracy. `text_options` are text(...)'s arguments as written in .bolt."""
    if classes is None:
        target, output, loss = f'binary(column="{label_column}")', "fc(hidden, 1, sigmoid)", "binary_cross_entropy"
    else:
        target, output, loss = (f'label({classes}, column="{label_column}")', f"fc(hidden, {classes}, softmax)",
                                "cross_entropy")
    return f"""
model text {{
  input  doc: text({text_options})
  target y:   {target}
  hidden = fc(doc, {hidden}, relu)
  scores = {output}
  loss    {loss}(scores, y)
  metrics accuracy
  train {{
    optimizer adam(lr={lr})
    batch     {batch}
    epochs    {epochs}
  }}
}}
"""


def write_lines(path, lines) -> str:
    """`lines` as a UTF-8 text file, one a line (CSV/TSV fixtures); returns the path as a string."""
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def write_test_set(model, path):
    """The model's own test set (its data block) written as an XC file, values exact to float32
    ('.9g'), so that reading it back gives the same rows; returns that Dataset."""
    from boltc.runtime.data import xcformat
    ds = model.dataset(model.plan["data"]["test"])
    xcformat.write_xc(path, ds.inputs["features"], ds.labels, value_format=".9g")
    return ds


def kill_and_resume(cmd: list, tmp_path, env: dict):
    """Train with `cmd` uninterrupted (ref.boltc), then again with a checkpoint after every epoch,
    SIGKILLed once its first checkpoint exists and finished with --resume (out.boltc). Returns the two
    saved models and the epochs the checkpoint held when the process died."""
    ref, out = tmp_path / "ref.boltc", tmp_path / "out.boltc"
    subprocess.run(cmd + ["-o", str(ref)], check=True, env=env, capture_output=True, timeout=300)
    cmd = cmd + ["--checkpoint-interval", "1e-6"]          # a checkpoint after every epoch
    ck = tmp_path / "out.boltc.ckpt"
    p = subprocess.Popen(cmd + ["-o", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not ck.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.wait()
    assert ck.exists()
    done = savefile.load_model(ck).optimizer["epochs_done"]
    r = subprocess.run(cmd + ["-o", str(out), "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return savefile.load_model(ref), savefile.load_model(out), done
