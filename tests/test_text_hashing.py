"""Tokenisation and feature hashing of fixed strings against hand-computed ids (runtime/data/text.py)."""
import numpy as np
import pytest

from boltc.errors import BoltError
from boltc.runtime.data import text as T


def _entry(**kw):
    e = {"name": "doc", "kind": "text", "dim": 1000, "column": "text", "tokenizer": "words", "ngrams": 1,
         "lowercase": True, "values": "counts", "seed": 0, "normalize": "none"}
    e.update(kw)
    return e


def test_fnv1a_matches_published_test_vectors():
    # FNV-1a 32-bit reference values (Noll's test suite): "", "a", "foobar"
    assert T.fnv1a32(b"") == 0x811C9DC5
    assert T.fnv1a32(b"a") == 0xE40C292C
    assert T.fnv1a32(b"foobar") == 0xBF9CF968


def test_seed_is_xored_into_the_offset_basis():
    # by hand: ((0x811C9DC5 ^ 5) ^ 0x61) * 0x01000193 mod 2**32
    expected = (((0x811C9DC5 ^ 5) ^ 0x61) * 0x01000193) & 0xFFFFFFFF
    assert T.fnv1a32(b"a", seed=5) == expected
    assert T.fnv1a32(b"a", seed=5) != T.fnv1a32(b"a", seed=0)


def test_fmix32_hand_computed():
    # MurmurHash3 fmix32(1) = 0x514E28B7 (widely published); fmix32(0) = 0
    assert T.fmix32(1) == 0x514E28B7
    assert T.fmix32(0) == 0


def test_feature_id_of_fixed_tokens():
    # "a": fnv 0xE40C292C -> fmix32 -> mod 1000, each step by the formulas above
    h = 0xE40C292C
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    assert T.feature_id("a", 1000) == h % 1000
    # a bigram is the hash of the two words joined by one space
    assert T.feature_id("new york", 1 << 20) == T.fmix32(T.fnv1a32(b"new york")) % (1 << 20)


def test_words_tokenizer_splits_on_non_word_bytes_and_keeps_unicode_letters():
    assert T.tokenize("Hello, World! it's x_1") == ["hello", "world", "it", "s", "x_1"]
    assert T.tokenize("Crème brûlée", lowercase=False) == ["Crème", "brûlée"]
    assert T.tokenize("ÉTÉ") == ["été"]
    assert T.tokenize("  ...  ") == []


def test_chars_tokenizer_windows_and_short_texts():
    assert T.tokenize("Abcd", "chars", 3) == ["abc", "bcd"]
    assert T.tokenize("a  \n b", "chars", 2) == ["a ", " b"]          # white space runs become one space
    assert T.tokenize("ab", "chars", 3) == ["ab"]                       # shorter than k: one token
    assert T.tokenize("", "chars", 3) == []
    assert T.tokenize("héé", "chars", 2) == ["hé", "éé"]                # characters, not bytes


def test_ngram_strings():
    assert T.ngram_strings(["a", "b", "c"], 2) == ["a", "b", "c", "a b", "b c"]
    assert T.ngram_strings(["a", "b", "c"], 3)[-1] == "a b c"


def test_featurize_counts_of_a_fixed_sentence_by_hand():
    m = T.featurize_column(["the cat saw the cat"], _entry(ngrams=2))
    row = dict(zip(m.indices.tolist(), m.data.tolist()))
    expected = {}
    for g in ["the", "cat", "saw", "the", "cat", "the cat", "cat saw", "saw the", "the cat"]:
        fid = T.feature_id(g, 1000)
        expected[fid] = expected.get(fid, 0) + 1
    assert row == expected
    assert row[T.feature_id("the cat", 1000)] == 2


@pytest.mark.parametrize("tokenizer,k", [("words", None), ("chars", 3), ("chars", 1)])
@pytest.mark.parametrize("ngrams", [1, 2, 3])
def test_vectorised_featuriser_equals_the_reference(tokenizer, k, ngrams):
    texts = ["Hello, World! héllo wörld", "", "a b c d", "don't stop\nbelieving", "x" * 300 + " y", "   ",
             "ÉCOLE été", "one"]
    e = _entry(tokenizer=tokenizer, char_k=k, ngrams=ngrams, seed=7, dim=97)
    m = T.featurize_column(texts, e)
    assert m.shape == (len(texts), 97)
    for r, t in enumerate(texts):
        grams = T.ngram_strings(T.tokenize(t, tokenizer, k), ngrams)
        expected = np.bincount([T.feature_id(g, 97, 7) for g in grams], minlength=97)
        np.testing.assert_array_equal(m[r].toarray().ravel(), expected)


def test_ngrams_never_cross_rows():
    m = T.featurize_column(["alpha", "beta"], _entry(ngrams=2, dim=1 << 20))
    assert m[0].nnz == 1 and m[1].nnz == 1
    assert T.feature_id("alpha beta", 1 << 20) not in set(m.indices.tolist())


def test_log_values_and_l2_normalisation():
    raw = T.featurize_column(["b a a a"], _entry(values="log", dim=1 << 16))
    row = dict(zip(raw.indices.tolist(), raw.data.tolist()))
    assert row[T.feature_id("a", 1 << 16)] == pytest.approx(np.log(4.0))
    assert row[T.feature_id("b", 1 << 16)] == pytest.approx(np.log(2.0))
    normed = T.featurize_column(["b a a a", ""], _entry(values="counts", normalize="l2", dim=1 << 16))
    a, b = T.feature_id("a", 1 << 16), T.feature_id("b", 1 << 16)
    assert normed[0, a] == pytest.approx(3 / np.sqrt(10))
    assert normed[0, b] == pytest.approx(1 / np.sqrt(10))
    assert normed[1].nnz == 0                        # an empty text stays an all-zero row
    assert normed.indices.dtype == np.int32 and normed.indptr.dtype == np.int64
    assert normed.data.dtype == np.float32


def test_lowercase_false_keeps_case():
    up = T.featurize_column(["Cat"], _entry(lowercase=False))
    low = T.featurize_column(["Cat"], _entry(lowercase=True))
    assert up.indices.tolist() == [T.feature_id("Cat", 1000)]
    assert low.indices.tolist() == [T.feature_id("cat", 1000)]


def test_categorical_hashes_the_whole_field():
    e = {"name": "city", "kind": "categorical", "dim": 50, "column": "city", "seed": 3}
    m = T.featurize_column(["New York", "", "new york"], e)
    assert m[0].indices.tolist() == [T.feature_id("New York", 50, 3)]
    assert m[1].indices.tolist() == [T.feature_id("", 50, 3)]
    assert m[2].indices.tolist() == [T.feature_id("new york", 50, 3)]
    assert m.data.tolist() == [1.0, 1.0, 1.0]


def test_tokenizer_given_as_a_string_chars_k():
    a = T.featurize_column(["hello"], _entry(tokenizer="chars(2)"))
    b = T.featurize_column(["hello"], _entry(tokenizer="chars", char_k=2))
    assert (a != b).nnz == 0


@pytest.mark.parametrize("bad", [dict(tokenizer="bpe"), dict(ngrams=4), dict(values="tfidf"),
                                 dict(tokenizer="chars", char_k=0), dict(dim=0)])
def test_bad_settings_raise_bolt_errors(bad):
    with pytest.raises(BoltError):
        T.featurize_column(["x"], _entry(**bad))


def test_featurize_strings_for_predict():
    plan = {"inputs": [_entry(ngrams=2, normalize="l2")],
            "target": {"name": "y", "kind": "single", "classes": 2, "class_names": ["neg", "pos"]}}
    ds = T.featurize_strings(["good movie", "bad"], plan)
    assert ds.labels is None and ds.rows == 2 and ds.class_names == ["neg", "pos"]
    direct = T.featurize_column(["good movie", "bad"], plan["inputs"][0])
    assert (ds.inputs["doc"] != direct).nnz == 0
    two = {"inputs": [_entry(), _entry(name="c", kind="categorical", column="city")], "target": None}
    with pytest.raises(BoltError, match="several columns"):
        T.featurize_strings(["x"], two)
    ds2 = T.featurize_strings([{"text": "a b", "city": "Paris"}], two)
    assert ds2.inputs["c"].indices.tolist() == [T.feature_id("Paris", 1000)]


def test_featurising_in_blocks_equals_one_block(monkeypatch):
    texts = [f"row {i} " + "word " * (i % 7) + "crème" for i in range(50)]
    e = _entry(ngrams=3, values="log", normalize="l2", dim=257)
    whole = T._featurize_block(texts, T.check_entry(e))
    monkeypatch.setattr(T, "BLOCK_CHARS", 64)          # forces about 20 blocks
    blocks = T.featurize_column(texts, e)
    assert blocks.shape == whole.shape and (blocks != whole).nnz == 0
    assert blocks.indptr.dtype == np.int64


def test_featurize_strings_accepts_arrays_and_tuples():
    plan = {"inputs": [_entry()], "target": None}
    a = T.featurize_strings(np.array(["good movie", "bad"]), plan).inputs["doc"]
    b = T.featurize_strings(("good movie", "bad"), plan).inputs["doc"]
    assert (a != b).nnz == 0 and a[0].indices.tolist() == sorted({T.feature_id("good", 1000),
                                                                 T.feature_id("movie", 1000)})


def test_native_span_hashing_equals_the_numpy_specification(monkeypatch):
    rng = np.random.default_rng(0)
    buf = rng.integers(0, 256, 5000).astype(np.uint8)
    starts = rng.integers(0, 4900, 700)
    lengths = rng.integers(0, 90, 700)
    init = rng.integers(0, 2**32, 700, dtype=np.uint64).astype(np.uint32)
    expected = T.hash_spans_numpy(buf, starts, lengths, init)
    np.testing.assert_array_equal(T.hash_spans(buf, starts, lengths, init), expected)
    texts = ["Hello, World! héllo wörld", "a b c d e", "", "x" * 200]
    e = _entry(ngrams=3, dim=1 << 20)
    native = T.featurize_column(texts, e)
    monkeypatch.setattr(T, "_NATIVE", [None])          # force the NumPy loop
    numpy_path = T.featurize_column(texts, e)
    assert (native != numpy_path).nnz == 0
