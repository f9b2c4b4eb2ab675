"""Request bodies -> input rows in the form `Model.predict` takes, checked field by field.

Every mistake is a RequestError: an HTTP status and a JSON body naming the field (`rows[3].ids[1]`),
the row, and what was expected, so a client can fix the request without reading server logs.

Rows (/v1): a sparse input takes {"ids": [...], "values": [...]} (values default to 1.0) or a full
vector; a dense input takes a full vector (or ids/values); a text model takes a string, or an object
{column: text} when it reads several columns.
OIP tensors (/v2): the input tensor by name, FP32 shape [rows, dim] (dense data); for a sparse input
also CSR as three tensors `<name>.indices`, `<name>.values` (optional) and `<name>.offsets`
(rows + 1 offsets); text as BYTES shape [rows].
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from boltc.serve.models import InputSchema, ServedModel


class RequestError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None, row: int | None = None,
                 expected: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.row, self.expected = status, message, field, row, expected
        self.headers = headers or {}

    def body(self) -> dict:
        out = {"error": self.message}
        for k in ("field", "row", "expected"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        return out


def bad(field: str, expected: str, row: int | None = None, got=None, status: int = 422) -> RequestError:
    shown = "" if got is None else f", got {_short(got)}"
    return RequestError(status, f"{field}: expected {expected}{shown}", field, row, expected)


def _short(v) -> str:
    s = json.dumps(v) if not isinstance(v, str) else json.dumps(v)
    return s if len(s) <= 60 else s[:57] + "..."


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise RequestError(400, "the body is not UTF-8 text", "body", None, "a JSON object") from None
    except json.JSONDecodeError as e:
        raise RequestError(400, f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}", "body", None,
                           "a JSON object") from None
    if not isinstance(body, dict):
        raise bad("body", "a JSON object", got=type(body).__name__, status=400)
    return body


@dataclass
class Rows:
    """Parsed rows: `X` is what Model.predict takes (CSR, array or list of texts); `n` rows."""
    X: object
    n: int


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


# ------------------------------------------------------------------ plain /v1 rows
def parse_rows(rows, schema: InputSchema, max_rows: int) -> Rows:
    if not isinstance(rows, list):
        raise bad("rows", "a list of rows", got=type(rows).__name__)
    if not rows:
        raise bad("rows", "at least one row", got=rows)
    if len(rows) > max_rows:
        raise RequestError(413, f"rows: {len(rows)} rows is more than the limit of {max_rows} per request",
                           "rows", None, f"at most {max_rows} rows")
    if schema.kind == "text":
        return Rows(_text_rows(rows, schema), len(rows))
    indptr = [0]
    ids_all: list[int] = []
    vals_all: list[float] = []
    for r, row in enumerate(rows):
        ids, vals = _vector_row(row, r, schema)
        ids_all.extend(ids)
        vals_all.extend(vals)
        indptr.append(len(ids_all))
    X = SparseRows(ids_all, vals_all, indptr, schema.dim)
    if schema.kind == "dense":
        X = X.to_csr().toarray()
    return Rows(X, len(rows))


class SparseRows:
    """CSR rows as Python lists: requests are joined first and one CSR is built per batch (building a
    scipy matrix per request costs more than the request's share of the kernels)."""
    __slots__ = ("ids", "vals", "indptr", "dim")

    def __init__(self, ids: list, vals: list, indptr: list, dim: int):
        self.ids, self.vals, self.indptr, self.dim = ids, vals, indptr, dim

    @staticmethod
    def join(parts: list["SparseRows"]) -> "SparseRows":
        ids, vals, indptr = [], [], [0]
        for p in parts:
            base = len(ids)
            ids.extend(p.ids)
            vals.extend(p.vals)
            indptr.extend(base + o for o in p.indptr[1:])
        return SparseRows(ids, vals, indptr, parts[0].dim)

    def to_csr(self) -> sp.csr_matrix:
        return sp.csr_matrix((np.asarray(self.vals, np.float32), np.asarray(self.ids, np.int32),
                              np.asarray(self.indptr, np.int64)), shape=(len(self.indptr) - 1, self.dim))


def _vector_row(row, r: int, schema: InputSchema) -> tuple[list[int], list[float]]:
    dim = schema.dim
    f = f"rows[{r}]"
    if isinstance(row, list):                                   # a full vector
        if len(row) != dim:
            raise bad(f, f"a vector of {dim} numbers (input '{schema.name}')", r, f"{len(row)} numbers")
        if not (all(type(v) is float or type(v) is int for v in row) and all(map(math.isfinite, row))):
            for j, v in enumerate(row):
                if not _is_num(v):
                    raise bad(f"{f}[{j}]", "a finite number", r, v)
        ids = [j for j, v in enumerate(row) if v != 0]
        return ids, [row[j] for j in ids]
    if not isinstance(row, dict):
        want = "{\"ids\": [...], \"values\": [...]} or a vector of numbers"
        raise bad(f, want, r, type(row).__name__)
    unknown = set(row) - {"ids", "values"}
    if unknown:
        raise bad(f"{f}.{sorted(unknown)[0]}", "only the fields 'ids' and 'values'", r)
    if "ids" not in row:
        raise bad(f"{f}.ids", f"a list of feature ids in [0, {dim})", r)
    ids = row["ids"]
    if not isinstance(ids, list):
        raise bad(f"{f}.ids", f"a list of feature ids in [0, {dim})", r, ids)
    # fast path: one pass of C-level checks; the slow loop only runs to name the bad entry
    if ids and not (all(type(i) is int for i in ids) and min(ids) >= 0 and max(ids) < dim):
        for j, i in enumerate(ids):
            if not _is_int(i) or not 0 <= i < dim:
                raise bad(f"{f}.ids[{j}]", f"an integer feature id in [0, {dim}) (input '{schema.name}')", r, i)
    vals = row.get("values")
    if vals is None:
        return ids, [1.0] * len(ids)
    if not isinstance(vals, list) or len(vals) != len(ids):
        raise bad(f"{f}.values", f"a list of {len(ids)} numbers (one per id)", r,
                  f"{len(vals)} values" if isinstance(vals, list) else vals)
    if not (all(type(v) is float or type(v) is int for v in vals) and all(map(math.isfinite, vals))):
        for j, v in enumerate(vals):
            if not _is_num(v):
                raise bad(f"{f}.values[{j}]", "a finite number", r, v)
    return ids, vals


def _text_rows(rows: list, schema: InputSchema) -> list:
    several = len(schema.columns) > 1
    for r, row in enumerate(rows):
        if isinstance(row, str) and not several:
            continue
        if isinstance(row, dict):
            for k, v in row.items():
                if k not in schema.columns:
                    raise bad(f"rows[{r}].{k}", f"one of the columns {schema.columns}", r)
                if not isinstance(v, str):
                    raise bad(f"rows[{r}].{k}", "a string", r, v)
            continue
        want = f"an object {{column: text}} with columns {schema.columns}" if several else \
            f"a string (or an object {{\"{schema.columns[0]}\": text}})"
        raise bad(f"rows[{r}]", want, r, type(row).__name__)
    if not several:      # one column: plain strings, objects reduced to their text
        return [row if isinstance(row, str) else row.get(schema.columns[0], "") for row in rows]
    return rows


def parse_top_k(body: dict, served: ServedModel, field: str = "top_k", default: int = 5) -> int:
    k = body.get(field, default)
    if not _is_int(k) or k < 1:
        raise bad(field, "a positive integer", got=k)
    return min(k, max(1, served.classes))


def parse_sparse(body: dict, served: ServedModel, field: str = "sparse") -> bool:
    v = body.get(field)
    if v is None:
        return served.sparse_default and served.has_sparse_inference
    if not isinstance(v, bool):
        raise bad(field, "true or false", got=v)
    if v and not served.has_sparse_inference:
        raise bad(field, "false: this model's output layer has no LSH hashing, so it has no sparse inference",
                  got=v)
    return v


def parse_exclude_seen(body: dict, served: ServedModel, field: str = "exclude_seen") -> bool:
    v = body.get(field, False)
    if not isinstance(v, bool):
        raise bad(field, "true or false", got=v)
    if v and not served.supports_exclude_seen:
        raise bad(field, f"false: {served.exclude_seen_refusal}", got=v)
    return v


def parse_exclude(body: dict, n: int, classes: int) -> list[set] | None:
    ex = body.get("exclude")
    if ex is None:
        return None
    if not isinstance(ex, list) or len(ex) != n:
        raise bad("exclude", f"a list of {n} lists of label ids (one per row)", got=ex)
    out = []
    for r, ids in enumerate(ex):
        if not isinstance(ids, list):
            raise bad(f"exclude[{r}]", "a list of label ids", r, ids)
        for j, i in enumerate(ids):
            if not _is_int(i) or not 0 <= i < classes:
                raise bad(f"exclude[{r}][{j}]", f"a label id in [0, {classes})", r, i)
        out.append(set(ids))
    return out


# ------------------------------------------------------------------ Open Inference Protocol tensors
def parse_oip_inputs(body: dict, schema: InputSchema, max_rows: int) -> Rows:
    tensors = body.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise bad("inputs", "a non-empty list of tensors {name, shape, datatype, data}", got=tensors)
    by_name = {}
    for t, ten in enumerate(tensors):
        if not isinstance(ten, dict) or not isinstance(ten.get("name"), str):
            raise bad(f"inputs[{t}]", "a tensor object with a string 'name'", got=ten)
        by_name[ten["name"]] = (t, ten)
    name = schema.name
    if schema.kind != "text" and f"{name}.indices" in by_name:
        return _oip_csr(by_name, schema, max_rows)
    if name not in by_name:
        names = [name] + ([f"{name}.indices", f"{name}.offsets"] if schema.kind == "sparse" else [])
        raise bad("inputs", f"a tensor named {' or '.join(repr(n) for n in names)}", got=sorted(by_name))
    t, ten = by_name[name]
    shape, data = _tensor(ten, t)
    if schema.kind == "text":
        if len(shape) != 1 or ten.get("datatype") != "BYTES":
            raise bad(f"inputs[{t}]", "datatype BYTES with shape [rows]", got=[ten.get("datatype"), shape])
        rows = data
    else:
        if len(shape) != 2 or shape[1] != schema.dim:
            raise bad(f"inputs[{t}].shape", f"[rows, {schema.dim}]", got=shape)
        if ten.get("datatype") not in ("FP32", "FP64", "FP16", "INT32", "INT64"):
            raise bad(f"inputs[{t}].datatype", "FP32 (or another numeric datatype)", got=ten.get("datatype"))
        flat = _flat(data)
        if len(flat) != shape[0] * shape[1]:
            raise bad(f"inputs[{t}].data", f"{shape[0] * shape[1]} numbers (shape {shape})", got=f"{len(flat)} numbers")
        rows = [flat[i * shape[1]:(i + 1) * shape[1]] for i in range(shape[0])]
    try:
        return parse_rows(rows, schema, max_rows)
    except RequestError as e:          # name the tensor, not the /v1 field
        e.field = f"inputs[{t}].data" + (e.field[4:] if e.field and e.field.startswith("rows") else "")
        e.message = f"{e.field}: expected {e.expected}" if e.expected else e.message
        raise


def _tensor(ten: dict, t: int):
    shape = ten.get("shape")
    if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
        raise bad(f"inputs[{t}].shape", "a list of non-negative integers", got=shape)
    if "data" not in ten:
        raise bad(f"inputs[{t}].data", "the tensor's data", got=None)
    return shape, ten["data"]


def _flat(data) -> list:
    if isinstance(data, list) and data and isinstance(data[0], list):
        return [v for row in data for v in (_flat(row) if isinstance(row, list) else [row])]
    return data if isinstance(data, list) else [data]


def _oip_csr(by_name: dict, schema: InputSchema, max_rows: int) -> Rows:
    name = schema.name
    if f"{name}.offsets" not in by_name:
        raise bad("inputs", f"a tensor named '{name}.offsets' beside '{name}.indices' (CSR rows)")
    ti, ind = by_name[f"{name}.indices"]
    to, off = by_name[f"{name}.offsets"]
    _, ind_data = _tensor(ind, ti)
    _, off_data = _tensor(off, to)
    ind_data, off_data = _flat(ind_data), _flat(off_data)
    if len(off_data) < 2:
        raise bad(f"inputs[{to}].data", "rows + 1 offsets, starting at 0", got=off_data)
    rows = []
    vals_data = None
    if f"{name}.values" in by_name:
        tv, vt = by_name[f"{name}.values"]
        _, vals_data = _tensor(vt, tv)
        vals_data = _flat(vals_data)
        if len(vals_data) != len(ind_data):
            raise bad(f"inputs[{tv}].data", f"{len(ind_data)} values (one per index)", got=f"{len(vals_data)} values")
    if off_data[0] != 0 or off_data[-1] != len(ind_data):
        raise bad(f"inputs[{to}].data", f"offsets from 0 to {len(ind_data)} (the number of indices)",
                  got=[off_data[0], off_data[-1]])
    for r in range(len(off_data) - 1):
        a, b = off_data[r], off_data[r + 1]
        if not (_is_int(a) and _is_int(b) and 0 <= a <= b <= len(ind_data)):
            raise bad(f"inputs[{to}].data[{r + 1}]", "non-decreasing integer offsets", r, b)
        rows.append({"ids": ind_data[a:b], **({"values": vals_data[a:b]} if vals_data is not None else {})})
    try:
        return parse_rows(rows, schema, max_rows)
    except RequestError as e:
        if e.field and e.field.startswith("rows["):
            e.field = f"inputs[{ti}].data (row {e.row})"
            e.message = f"{e.field}: expected {e.expected}"
        raise
