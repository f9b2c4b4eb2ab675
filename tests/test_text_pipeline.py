"""Raw CSV text -> boltc.compile(...).fit -> predict by class name, saved and reloaded; and the CLI.

A small separable corpus (each topic has its own vocabulary) so the right answer is known: a trained
model must put held-out sentences in their topic. NumPy interpreter (the specification), tiny shapes.
"""
import random

import numpy as np
import pytest

import boltc
from boltc.cli import main as cli_main
from boltc.errors import DataError
from runtime_models import text_source, write_lines

TOPICS = {
    "sports": "ball goal team match score player coach league referee stadium",
    "space": "rocket orbit nasa shuttle planet launch moon astronaut telescope galaxy",
    "cooking": "recipe oven flour butter sauce garlic onion bake simmer spoon",
}

MODEL = text_source('column="body", tokenizer=words, ngrams=2, dim=4096, values=log', classes=3,
                    label_column="topic", hidden=16, lr=0.01, batch=16, epochs=8)


def _sentence(rng, topic):
    words = TOPICS[topic].split() + "the a of and to in is it".split()
    return " ".join(rng.choice(words) for _ in range(rng.randint(4, 12))).capitalize() + "."


def _corpus(path, n, seed):
    rng = random.Random(seed)
    rows = ["topic,body"]
    for _ in range(n):
        t = rng.choice(sorted(TOPICS))
        rows.append(f'{t},"{_sentence(rng, t)}, ""quoted""\nsecond line"')
    return write_lines(path, rows)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("text")
    train = _corpus(tmp / "train.csv", 240, 1)
    test = _corpus(tmp / "test.csv", 60, 2)
    m = boltc.compile(MODEL, backend="numpy")
    m.fit(train, progress=False)
    return m, tmp, test


def test_fit_learns_topics_and_keeps_class_names(trained):
    m, _, test = trained
    assert m.plan["target"]["class_names"] == ["cooking", "space", "sports"]
    assert m.evaluate(test)["accuracy"] >= 95.0


def test_predict_raw_strings_answers_with_names(trained):
    m, _, _ = trained
    ids, scores = m.predict(["the rocket reached orbit", "bake the flour with butter", "the coach and the team"],
                            top_k=2)
    assert [m.class_name(i) for i in ids[:, 0]] == ["space", "cooking", "sports"]
    assert np.all(scores[:, 0] >= scores[:, 1])


def test_saved_model_predicts_the_same_by_name(trained):
    m, tmp, _ = trained
    path = tmp / "topics.boltc"
    m.save(path)
    loaded = boltc.load(str(path), backend="numpy")
    assert loaded.plan["target"]["class_names"] == ["cooking", "space", "sports"]
    texts = ["nasa telescope galaxy", "garlic sauce simmer", "referee stadium goal"]
    a, _ = m.predict(texts, top_k=1)
    b, _ = loaded.predict(texts, top_k=1)
    np.testing.assert_array_equal(a, b)


def test_cli_predict_text(trained, capsys):
    m, tmp, _ = trained
    path = tmp / "cli.boltc"
    m.save(path)
    rc = cli_main(["predict", str(path), "--text", "launch the shuttle to the moon", "--top-k", "2",
                   "--backend", "numpy"])
    out = capsys.readouterr().out.strip()
    assert rc == 0 and out.split()[0].startswith("space:")


def test_unknown_label_in_a_test_file_is_located(trained):
    m, tmp, _ = trained
    bad = tmp / "bad.csv"
    bad.write_text('topic,body\nspace,"orbit"\nfishing,"rod and reel"\n', encoding="utf-8")
    with pytest.raises(DataError) as e:
        m.evaluate(str(bad))
    assert (e.value.location.line, e.value.location.column) == (3, 1)
    assert "unknown label 'fishing'" in e.value.message


SHOPS = """
model shops {
  input  doc:  text(column="review", ngrams=1, dim=2048, values=log)
  input  shop: categorical(column="store", dim=64)
  target verdict: label(2, column="label")
  a = fc(doc, 8, relu)
  b = fc(shop, 8, relu)
  c = concat(a, b)
  scores = fc(c, 2, softmax)
  loss cross_entropy(scores, verdict)
  metrics accuracy
  train {
    optimizer adam(lr=0.02)
    batch 16
    epochs 10
  }
}
"""


def test_a_text_and_a_categorical_column_feed_one_model(tmp_path):
    # the label needs both columns: "yes" when the review says good OR the store is north
    rng = random.Random(0)
    rows = ["label,review,store"]
    for _ in range(400):
        store = rng.choice(["north", "south", "east", "west"])
        word = rng.choice(["good", "bad"])
        label = "yes" if word == "good" or store == "north" else "no"
        rows.append(f"{label},{word} item {rng.choice('xyz')},{store}")
    m = boltc.compile(SHOPS, backend="numpy")
    m.fit(write_lines(tmp_path / "shops.csv", rows), progress=False)
    assert m.plan["target"]["class_names"] == ["no", "yes"]
    ids, _ = m.predict([{"review": "bad item", "store": "south"}, {"review": "bad item", "store": "north"},
                        {"review": "good item", "store": "west"}], top_k=1)
    assert [m.class_name(i) for i in ids[:, 0]] == ["no", "yes", "yes"]


def test_validation_file_lacking_a_class_uses_the_training_class_ids(tmp_path):
    """String labels: the mapping is fixed from the training file before the validation file is read,
    so a validation file holding only 'sports' still calls it class 2 (cooking, space, sports)."""
    train = _corpus(tmp_path / "train.csv", 120, 3)
    rng = random.Random(4)
    val_path = write_lines(tmp_path / "val.csv",
                           ["topic,body"] + [f'sports,"{_sentence(rng, "sports")}"' for _ in range(30)])
    m = boltc.compile(MODEL, backend="numpy")
    hist = m.fit(train, validation=val_path, progress=False)
    assert m.plan["target"]["class_names"] == ["cooking", "space", "sports"]
    val = m.dataset(val_path)
    assert set(val.labels.indices.tolist()) == {2}
    assert hist["epochs"][-1]["validation"]["accuracy"] >= 90.0
