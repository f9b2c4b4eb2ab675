"""CSV/TSV reading (runtime/data/csvfile.py): edge cases, each with the right result or a located error."""
import gzip
from pathlib import Path

import numpy as np
import pytest

from boltc.errors import DataError
from boltc.runtime.data import text as T
from boltc.runtime.data.csvfile import load_csv_dataset

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"


def _plan(classes=3, column="text", label="label", kind="single", **text):
    entry = {"name": "doc", "kind": "text", "dim": 1 << 16, "column": column, "tokenizer": "words",
             "ngrams": 1, "values": "counts", "normalize": "none", **text}
    return {"inputs": [entry], "target": {"name": "y", "kind": kind, "classes": classes, "column": label}}


def _write(tmp_path, name, content: str, gz=False) -> str:
    p = tmp_path / name
    if gz:
        with gzip.open(p, "wt", encoding="utf-8", newline="") as f:
            f.write(content)
    else:
        p.write_bytes(content.encode("utf-8"))
    return str(p)


def _ids(text):
    return sorted({T.feature_id(t, 1 << 16) for t in T.tokenize(text)})


def test_quotes_embedded_newlines_and_delimiters(tmp_path):
    path = _write(tmp_path, "a.csv",
                  'label,text\n'
                  'pos,"hello, ""quoted"" world"\n'
                  'neg,"line one\nline two"\n'
                  'pos,plain\n')
    ds = load_csv_dataset(path, _plan(classes=2))
    assert ds.rows == 3
    assert ds.inputs["doc"][0].indices.tolist() == _ids('hello, "quoted" world')
    assert ds.inputs["doc"][1].indices.tolist() == _ids("line one line two")
    assert ds.class_names == ["neg", "pos"]                       # sorted names -> ids 0, 1
    assert ds.labels.indices.tolist() == [1, 0, 1]


def test_a_bad_row_after_a_multiline_field_names_its_physical_line(tmp_path):
    path = _write(tmp_path, "a.csv", 'label,text\npos,"a\nb\nc"\nneg,x,extra\n')
    with pytest.raises(DataError) as e:
        load_csv_dataset(path, _plan())
    assert e.value.location.file == path and e.value.location.line == 5
    assert "3 fields" in e.value.message and "header has 2" in e.value.message


def test_empty_text_gives_an_empty_row(tmp_path):
    path = _write(tmp_path, "a.csv", 'label,text\n0,""\n1,\n2,word\n')
    ds = load_csv_dataset(path, _plan())
    assert [ds.inputs["doc"][i].nnz for i in range(3)] == [0, 0, 1]
    assert ds.labels.indices.tolist() == [0, 1, 2]
    assert ds.class_names == ["0", "1", "2"]                      # integer labels are the ids


def test_missing_column_named_by_the_model(tmp_path):
    path = _write(tmp_path, "a.csv", "label,body\n0,x\n")
    with pytest.raises(DataError) as e:
        load_csv_dataset(path, _plan())
    assert e.value.location.file == path and e.value.location.line == 1
    assert "'text'" in e.value.message and "input 'doc'" in e.value.message and "label, body" in e.value.message


def test_missing_label_column_is_an_error_for_training_but_not_for_predict(tmp_path):
    path = _write(tmp_path, "a.csv", "text\nhello\n")
    with pytest.raises(DataError, match="label column 'label'"):
        load_csv_dataset(path, _plan())
    ds = load_csv_dataset(path, _plan(), need_labels=False)
    assert ds.labels is None and ds.rows == 1


def test_unknown_label_at_predict_time_names_file_line_and_column(tmp_path):
    path = _write(tmp_path, "test.csv", "text,label\ngood,pos\nmeh,neutral\n")
    with pytest.raises(DataError) as e:
        load_csv_dataset(path, _plan(classes=2), class_names=["neg", "pos"])
    loc = e.value.location
    assert (loc.file, loc.line, loc.column) == (path, 3, 2)
    assert "unknown label 'neutral'" in e.value.message and "column 'label'" in e.value.message
    # predicting needs no labels: the same file featurises, the label column is ignored
    ds = load_csv_dataset(path, _plan(classes=2), class_names=["neg", "pos"], need_labels=False)
    assert ds.labels is None and ds.rows == 2 and ds.class_names == ["neg", "pos"]


def test_class_names_from_the_plan_fix_the_mapping(tmp_path):
    path = _write(tmp_path, "test.csv", "label,text\nb,x\n")
    plan = _plan(classes=3)
    plan["target"]["class_names"] = ["c", "b", "a"]               # the trained model's order, not sorted
    ds = load_csv_dataset(path, plan)
    assert ds.labels.indices.tolist() == [1] and ds.labels.shape == (1, 3)
    assert ds.class_names == ["c", "b", "a"]


def test_too_many_classes_and_out_of_range_ids(tmp_path):
    path = _write(tmp_path, "a.csv", "label,text\na,x\nb,x\nc,x\n")
    with pytest.raises(DataError) as e:
        load_csv_dataset(path, _plan(classes=2))
    assert e.value.location.line == 4 and "more than 2 distinct labels" in e.value.message
    path = _write(tmp_path, "b.csv", "label,text\n0,x\n7,x\n")
    with pytest.raises(DataError) as e:
        load_csv_dataset(path, _plan(classes=3))
    assert e.value.location.line == 3 and "outside 0..2" in e.value.message


def test_tsv_gzip_delimiter_option_and_literal_quotes(tmp_path):
    path = _write(tmp_path, "a.tsv.gz", 'label\tsentence\n1\tsays "hi\n0\tbye\n', gz=True)
    ds = load_csv_dataset(path, _plan(classes=2, column="sentence"))
    assert ds.rows == 2                                              # '"' is literal in TSV by default
    assert ds.inputs["doc"][0].indices.tolist() == _ids('says "hi')
    semi = _write(tmp_path, "a.txt", "label;text\n1;a,b\n")
    ds = load_csv_dataset({"kind": "file", "path": semi, "format": "csv", "options": {"delimiter": ";"}},
                          _plan(classes=2))
    assert ds.inputs["doc"][0].indices.tolist() == _ids("a b")


def test_names_option_renames_columns_and_integer_columns(tmp_path):
    path = _write(tmp_path, "a.tsv", "label\tcontent\n1\tgood\n")
    ds = load_csv_dataset({"path": path, "names": "label,sentence"}, _plan(classes=2, column="sentence"))
    assert ds.inputs["doc"][0].indices.tolist() == _ids("good")
    ds = load_csv_dataset(path, _plan(classes=2, column=1))
    assert ds.inputs["doc"][0].indices.tolist() == _ids("good")


def test_binary_and_multilabel_targets(tmp_path):
    path = _write(tmp_path, "a.csv", "label,text\ntrue,a\n0,b\nPOS,c\n")
    ds = load_csv_dataset(path, _plan(classes=1, kind="binary"))
    assert ds.labels.shape == (3, 1) and ds.labels.toarray().ravel().tolist() == [1, 0, 1]
    path = _write(tmp_path, "m.csv", 'label,text\n"x,z",a\ny,b\n')
    ds = load_csv_dataset(path, _plan(classes=3, kind="multi"))
    assert ds.class_names == ["x", "y", "z"]
    assert ds.labels[0].indices.tolist() == [0, 2] and ds.labels[1].indices.tolist() == [1]


def test_several_columns_feed_one_model_in_chunks(tmp_path):
    rows = "".join(f"{i % 2},text number {i},city{i % 5}\n" for i in range(25))
    path = _write(tmp_path, "a.csv", "label,text,city\n" + rows)
    plan = _plan(classes=2)
    plan["inputs"].append({"name": "city", "kind": "categorical", "dim": 64, "column": "city"})
    whole = load_csv_dataset(path, plan)
    chunked = load_csv_dataset(path, plan, chunk_rows=4)
    for name in ("doc", "city"):
        assert (whole.inputs[name] != chunked.inputs[name]).nnz == 0
    assert chunked.inputs["city"][7].indices.tolist() == [T.feature_id("city2", 64)]
    assert chunked.labels.indices.tolist() == [i % 2 for i in range(25)]


def test_unclosed_quote_and_empty_file_are_located(tmp_path):
    path = _write(tmp_path, "a.csv", 'label,text\n1,"never closed\n2,x\n')
    with pytest.raises(DataError) as e:
        load_csv_dataset(path, _plan())
    assert e.value.location.line == 2
    with pytest.raises(DataError, match="empty"):
        load_csv_dataset(_write(tmp_path, "e.csv", ""), _plan())
    with pytest.raises(DataError, match="cannot open"):
        load_csv_dataset(str(tmp_path / "nope.csv"), _plan())


def test_20newsgroups_file_reads_with_its_real_header():
    path = DATA / "20newsgroups" / "test.csv.gz"
    if not path.exists():
        pytest.skip("shared data not present")
    ds = load_csv_dataset({"path": str(path), "max_rows": 300}, _plan(classes=20, label="label_name"))
    assert ds.rows == 300 and ds.inputs["doc"].shape == (300, 1 << 16)
    assert ds.class_names[0] == "alt.atheism"                      # rows 0..318 are alt.atheism
    assert np.all(ds.labels.indices == 0)
    assert all(ds.inputs["doc"][i].nnz > 0 for i in range(300))


def test_invalid_utf8_is_a_located_error(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_bytes(b"label,text\n0,fine\n1,caf\xe9 latin-1\n")
    with pytest.raises(DataError) as e:
        load_csv_dataset(str(p), _plan())
    loc = e.value.location
    assert (loc.file, loc.line, loc.column) == (str(p), 3, 6) and "UTF-8" in e.value.message
