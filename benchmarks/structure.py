"""How the code is laid out: module sizes, imports inside functions, and the files that hold one op's
knowledge. Reads the source only (no import of boltc), so it measures any checkout:

    python benchmarks/structure.py                       # this tree
    python benchmarks/structure.py --rev <commit>        # a commit of this repository (git archive)
    python benchmarks/structure.py --ops layernorm dropout

Module size = non-blank lines of one .py file under boltc/, grammar/, runtime/ (tests, docs and
benchmarks excluded). An op's files = source files outside tests/docs/benchmarks that name the op as a
word (`layernorm`, `"layernorm"`, `lower_layernorm`, ... : the op name between non-letters)."""
from __future__ import annotations

import argparse
import ast
import io
import json
import re
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

SOURCE_DIRS = ("boltc", "grammar", "runtime")
ROOT = Path(__file__).resolve().parent.parent


def _files(rev: str | None) -> dict[str, str]:
    """{path: text} of the source files, from the tree or from a commit."""
    if rev is None:
        return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8")
                for d in SOURCE_DIRS for p in sorted((ROOT / d).rglob("*")) if p.suffix in (".py", ".lark")}
    raw = subprocess.run(["git", "-C", str(ROOT), "archive", rev, *SOURCE_DIRS], check=True,
                         capture_output=True).stdout
    out = {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for m in tar.getmembers():
            if m.isfile() and m.name.endswith((".py", ".lark")):
                out[m.name] = tar.extractfile(m).read().decode("utf-8")
    return out


def imports_in_functions(text: str) -> int:
    count = 0
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    count += 1
    return count


def op_files(files: dict[str, str], op: str) -> list[str]:
    word = re.compile(rf"(?<![A-Za-z]){re.escape(op)}(?![A-Za-z])")
    return sorted(p for p, t in files.items() if word.search(t))


def measure(rev: str | None, ops: list[str]) -> dict:
    files = _files(rev)
    py = {p: t for p, t in files.items() if p.endswith(".py")}
    sizes = {p: sum(1 for line in t.splitlines() if line.strip()) for p, t in py.items()}
    largest = max(sizes, key=sizes.get)
    # a package's __init__ that only names the package (a docstring, re-exports) is not a module of code
    code = [n for p, n in sizes.items() if not (p.endswith("__init__.py") and n <= 12)]
    return {"rev": rev or "tree", "modules": len(py), "median_lines": statistics.median(sizes.values()),
            "median_lines_code_modules": statistics.median(code),
            "largest": largest, "largest_lines": sizes[largest],
            "imports_in_functions": sum(imports_in_functions(t) for t in py.values()),
            "op_files": {op: op_files(files, op) for op in ops}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", action="append", help="git commit(s) to measure; default: the tree")
    ap.add_argument("--ops", nargs="*", default=["layernorm", "dropout"])
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "structure.json"))
    args = ap.parse_args(argv)
    rows = [measure(r, args.ops) for r in (args.rev or [None])]
    print(f"{'rev':<14}{'modules':>8}{'median lines':>14}{'(w/o small __init__)':>22}{'imports in fns':>16}  largest")
    for r in rows:
        print(f"{r['rev'][:12]:<14}{r['modules']:>8}{r['median_lines']:>14}{r['median_lines_code_modules']:>22}"
              f"{r['imports_in_functions']:>16}  {r['largest']} ({r['largest_lines']} lines)")
    for r in rows:
        for op, fs in r["op_files"].items():
            print(f"{r['rev'][:12]}  {op}: {len(fs)} files: {' '.join(fs)}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
