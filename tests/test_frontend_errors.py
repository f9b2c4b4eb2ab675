"""Malformed .bolt inputs: each raises the project's own error type with the exact line and column and
a message in the user's words (never lark's token names, never a traceback).

Each case edits one line of a small valid model; the expected location was worked out by hand from
the edited text (1-based line and column of the offending character).
"""
import pytest

from boltc.cli import main
from boltc.commands.check import check_source
from boltc.errors import BoltError, BoltErrorGroup, BoltSyntaxError, BoltValidationError

BASE = '''model m {
  input x: sparse(100)
  target y: multilabel(10)
  h = fc(x, 8, relu)
  s = fc(h, 10, softmax)
  loss cross_entropy(s, y)
  metrics precision@1
}
'''


def sub(old, new):
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def block(name, *lines):
    """BASE with a train/data block (its first line is line 8, settings start at line 9)."""
    body = "".join(f"    {ln}\n" for ln in lines)
    return sub("  metrics precision@1\n", f"  metrics precision@1\n  {name} {{\n{body}  }}\n")


SYNTAX, VALID = BoltSyntaxError, BoltValidationError
# (id, source, error type, message fragment, line, column)
CASES = [
    ("empty", "", SYNTAX, "empty file", 1, 1),
    ("no_model_keyword", sub("model m {", "modle m {"), VALID, "starts with `model <name> {`, found 'modle'", 1, 1),
    ("missing_open_brace", sub("model m {", "model m"), SYNTAX, "expected '{', found 'input'", 2, 3),
    ("unclosed_model", BASE.rstrip()[:-1], SYNTAX, "'{' is never closed", 1, 9),
    ("unclosed_paren", sub("sparse(100)", "sparse(100"), SYNTAX,
     "expected ')' to close the '(' at line 2, column 18, found 'target'", 3, 3),
    ("two_values_without_comma", sub("fc(x, 8", "fc(x, 8 9"), SYNTAX, "expected ')' or ',', found '9'", 4, 15),
    ("statement_without_value", sub("metrics precision@1", "metrics"), SYNTAX, "'metrics' needs a value", 8, 1),
    ("unknown_statement", sub("  metrics", "  optimizer adam\n  metrics"), VALID, "unknown statement 'optimizer'", 7, 3),
    ("single_quotes", sub("relu)", "'relu')"), SYNTAX, "strings use double quotes", 4, 16),
    ("bad_character", sub("fc(x, 8", "fc(x; 8"), SYNTAX, "unexpected character ';'", 4, 11),
    ("unclosed_string", block("data", 'train "a.txt'), SYNTAX, "string is never closed", 9, 11),
    ("trailing_words", BASE + "extra\n", SYNTAX, "expected the end of the file, found 'extra'", 9, 1),
    ("unknown_input_kind", sub("sparse(100)", "sprase(100)"), VALID,
     "unknown input kind 'sprase' (did you mean 'sparse'?); expected sparse, dense, text or categorical", 2, 12),
    ("unknown_declaration", sub("input x:", "inptu x:"), VALID, "unknown declaration 'inptu'", 2, 3),
    ("unknown_target_kind", sub("multilabel(10)", "multi(10)"), VALID, "unknown target kind 'multi'", 3, 13),
    ("unknown_layer", sub("fc(x, 8", "dense(x, 8"), VALID,
     "unknown layer 'dense'; expected fc, embedding, concat, layernorm or dropout", 4, 7),
    ("unknown_activation", sub("8, relu", "8, rleu"), VALID, "unknown activation 'rleu'", 4, 16),
    ("negative_width", sub("fc(x, 8", "fc(x, -8"), VALID, "dim of fc: expected a whole number >= 1, found -8", 4, 13),
    ("fractional_width", sub("fc(x, 8", "fc(x, 8.5"), VALID, "expected a whole number, found 8.5", 4, 13),
    ("sparsity_above_one", sub("softmax)", "softmax, sparsity=1.5)"), VALID,
     "expected auto or a fraction in (0, 1], found 1.5", 5, 35),
    ("unknown_fc_option", sub("softmax)", "softmax, sparse=0.1)"), VALID, "unknown option 'sparse' for fc", 5, 26),
    ("unknown_hash", sub("softmax)", "softmax, hash=lsh)"), VALID,
     "expected auto, none, dwta(...) or srp(...), found lsh", 5, 31),
    ("unknown_dwta_option", sub("softmax)", "softmax, sparsity=0.1, hash=dwta(tabels=3))"), VALID,
     "unknown option 'tabels' for dwta", 5, 50),
    ("too_many_arguments", sub("fc(x, 8, relu)", "fc(x, 8, relu, 3)"), VALID,
     "fc takes 3 positional argument(s)", 4, 22),
    ("missing_width", sub("fc(x, 8, relu)", "fc(x)"), VALID, "fc needs 'dim'", 4, 7),
    ("undefined_name", sub("fc(x, 8", "fc(z, 8"), VALID, "'z' is not defined", 4, 10),
    ("self_reference", sub("fc(x, 8", "fc(h, 8"), VALID, "layer 'h' uses itself as its input", 4, 10),
    ("unknown_loss", sub("cross_entropy(s, y)", "mse(s, y)"), VALID, "unknown loss 'mse'", 6, 8),
    ("loss_on_a_layer", sub("cross_entropy(s, y)", "cross_entropy(s, h)"), VALID,
     "the second argument of cross_entropy must be the target; 'h' is not", 6, 25),
    ("loss_needs_softmax", sub("10, softmax", "10, sigmoid"), VALID,
     "cross_entropy needs a softmax output; 's' uses sigmoid", 5, 17),
    ("output_width_mismatch", sub("fc(h, 10", "fc(h, 12"), VALID, "'s' has 12 outputs but 'y' needs 10 outputs", 5, 13),
    ("unknown_metric", sub("precision@1", "precison@1"), VALID, "unknown metric 'precison@1'", 7, 11),
    ("metric_without_cutoff", sub("precision@1", "precision"), VALID, "precision needs a cut-off", 7, 11),
    ("metric_cutoff_too_big", sub("precision@1", "precision@11"), VALID,
     "precision@11 asks for more than the 10 classes of 'y'", 7, 11),
    ("ndcg_without_cutoff", sub("precision@1", "precision@1, ndcg"), VALID, "ndcg needs a cut-off", 7, 24),
    ("ndcg_cutoff_zero", sub("precision@1", "ndcg@0"), VALID, "ndcg@k needs k >= 1", 7, 11),
    ("macro_f1_on_multilabel", sub("precision@1", "macro_f1"), VALID,
     "macro_f1 needs a label(n) or binary target (one class per example); 'y' is multilabel", 7, 11),
    ("misspelt_macro_f1", sub("precision@1", "macro_f2"), VALID,
     "unknown metric 'macro_f2' (did you mean 'macro_f1'?)", 7, 11),
    ("class_weights_unknown_word", block("train", "class_weights balance"), VALID,
     "class_weights: unknown value 'balance' (did you mean 'balanced'?)", 9, 19),
    ("class_weights_negative", block("train", "class_weights 1, -2, 1"), VALID,
     "class_weights: expected a class weight >= 0, found -2", 9, 22),
    ("class_weights_wrong_count", block("train", "class_weights 1, 2, 3"), VALID,
     "class_weights has 3 weights; expected 10, one per class of 'y'", 9, 19),
    ("class_weights_balanced_and_more", block("train", "class_weights balanced, 2"), VALID,
     "class_weights balanced takes no other value", 9, 29),
    ("as_names_not_a_boolean", sub("multilabel(10)", "multilabel(10, as_names=maybe)"), VALID,
     "as_names of multilabel: expected true or false, found maybe", 3, 37),
    ("label_smoothing_one", block("train", "label_smoothing 1"), VALID,
     "label_smoothing: expected a share of the target <= 0.999999, found 1", 9, 21),
    ("sparse_normalize_unknown", sub("sparse(100)", "sparse(100, normalize=l1)"), VALID,
     "unknown value 'l1'; expected l2 or none", 2, 34),
    ("text_idf_not_boolean", sub("input x: sparse(100)", "input x: text(idf=yes)"), VALID,
     "idf of text: expected true or false, found yes", 2, 21),
    ("sgd_negative_weight_decay", block("train", "optimizer sgd(weight_decay=-1)"), VALID,
     "weight_decay of sgd: expected a number >= 0", 9, 32),
    ("no_loss", sub("  loss cross_entropy(s, y)\n", ""), VALID, "the model has no loss", 1, 1),
    ("cycle", sub("h = fc(x, 8", "h = fc(s, 8"), VALID, "layers form a cycle: h -> s -> h", 5, 3),
    ("embedding_of_dense_input", sub("input x: sparse(100)", "input x: dense(100)").replace(
        "fc(x, 8, relu)", "embedding(x, 8)"), VALID, "embedding needs a sparse input", 4, 17),
    ("concat_of_sparse_input", sub("h = fc(x, 8, relu)", "e = fc(x, 8, relu)\n  h = concat(e, x)"), VALID,
     "concat needs dense values; 'x' is a sparse input", 5, 17),
    ("unused_layer", sub("  loss", "  extra = fc(h, 3, relu)\n  loss"), VALID,
     "'extra' is not used by the loss output 's'", 6, 3),
    ("unknown_train_setting", block("train", "optimiser adam"), VALID, "unknown train setting 'optimiser'", 9, 5),
    ("batch_zero", block("train", "batch 0"), VALID, "batch: expected a whole number >= 1, found 0", 9, 11),
    ("upkeep_budget_as_percent", block("train", "upkeep_budget 6"), VALID,
     "upkeep_budget: expected a fraction of the step work <= 1, found 6", 9, 19),
    ("upkeep_budget_zero", block("train", "upkeep_budget 0"), VALID,
     "upkeep_budget: expected a fraction of the step work > 0, found 0", 9, 19),
    ("checkpoint_interval_zero", block("train", "checkpoint_interval 0"), VALID,
     "checkpoint_interval: expected a number of seconds > 0, found 0", 9, 25),
    ("checkpoint_interval_word", block("train", "checkpoint_interval often"), VALID,
     "checkpoint_interval: expected a number of seconds, found", 9, 25),
    ("checkpoint_negative", block("train", "checkpoint -1"), VALID,
     "checkpoint: expected a number of epochs", 9, 16),
    ("setting_twice", block("train", "epochs 2", "epochs 3"), VALID,
     "'epochs' is given twice in the train block (first at line 9)", 10, 5),
    ("unknown_optimizer", block("train", "optimizer adamw(lr=0.1)"), VALID,
     "unknown optimizer 'adamw' (did you mean 'adam'?); expected adam or sgd", 9, 15),
    ("negative_lr", block("train", "optimizer adam(lr=-0.1)"), VALID, "lr of adam: expected a number > 0", 9, 23),
    ("unknown_sampler", block("train", "sampler random"), VALID, "unknown sampler 'random'", 9, 13),
    ("unknown_data_split", block("data", 'training "a.txt"'), VALID, "unknown data setting 'training'", 9, 5),
    ("unknown_file_format", block("data", 'train file("a.txt", format=json)'), VALID,
     "unknown format 'json'; expected xc, svmlight, csv or tsv", 9, 32),
    ("stream_not_a_boolean", block("data", 'train file("a.txt", stream=maybe)'), VALID,
     "stream of file: expected true or false, found maybe", 9, 32),
    ("synthetic_without_rows", block("data", "train synthetic(features=100)"), VALID, "synthetic needs 'rows'", 9, 11),
    ("synthetic_wider_than_input", block("data", "train synthetic(rows=10, features=200)"), VALID,
     "synthetic train data has 200 features but input 'x' has 100", 9, 30),
    ("sparse_without_hash", sub("softmax)", "softmax, sparsity=0.5, hash=none)"), VALID,
     "needs a hash to choose its active neurons", 5, 40),
    ("random_share_above_one", sub("softmax)", "softmax, sparsity=0.5, hash=dwta(random_share=1.5))"), VALID,
     "random_share of dwta: expected a share <= 1, found 1.5", 5, 63),
    ("unknown_negatives", sub("softmax)", "softmax, sparsity=0.5, hash=dwta(negatives=popular))"), VALID,
     "unknown value 'popular'; expected frequency or uniform", 5, 60),
    ("hash_on_dense_layer", sub("softmax)", "softmax, sparsity=1.0, hash=dwta(tables=2))"), VALID,
     "hash settings have no effect on a dense layer", 5, 40),
    ("chars_zero", sub("input x: sparse(100)", "input x: text(tokenizer=chars(0))"), VALID,
     "expected a character n-gram length >= 1, found 0", 2, 33),
]


def _errors(source):
    with pytest.raises(BoltError) as info:
        check_source(source, "m.bolt")
    e = info.value
    return e.errors if isinstance(e, BoltErrorGroup) else [e]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_is_located(case):
    _, source, kind, message, line, column = case
    errors = _errors(source)
    assert len(errors) == 1, [e.render() for e in errors]
    e = errors[0]
    assert isinstance(e, kind)
    assert message in e.message
    assert (e.location.file, e.location.line, e.location.column) == ("m.bolt", line, column)


def test_at_least_thirty_cases():
    assert len(CASES) >= 30


def test_all_errors_in_one_run_in_source_order():
    source = sub("fc(x, 8", "fc(z, 8").replace("precision@1", "precison@1").replace("10, softmax", "10, sofmax")
    got = [(e.location.line, e.location.column, e.message.split(";")[0]) for e in _errors(source)]
    assert got == [(4, 10, "'z' is not defined"), (5, 17, "unknown activation 'sofmax' (did you mean 'softmax'?)"),
                   (7, 11, "unknown metric 'precison@1' (did you mean 'precision'?)")]


def test_a_misspelt_name_gets_the_nearest_defined_one():
    (e,) = _errors(sub("fc(h, 10", "fc(hh, 10").replace("h = fc(x", "hidden = fc(x").replace("fc(hh", "fc(hiden"))
    assert e.message == "'hiden' is not defined; did you mean 'hidden'?"
    assert (e.location.line, e.location.column) == (5, 10)


def test_two_consequences_of_one_wrong_loss_are_both_named():
    src = sub("cross_entropy(s, y)", "binary_cross_entropy(s, y)").replace("multilabel(10)", "label(10)")
    got = [(e.location.line, e.location.column) for e in _errors(src)]
    assert got == [(5, 17), (6, 8)]
    # a multi-label target fits binary_cross_entropy (one sigmoid per label): the activation alone is wrong
    got = [(e.location.line, e.location.column) for e in _errors(sub("cross_entropy(s, y)", "binary_cross_entropy(s, y)"))]
    assert got == [(5, 17)]


def test_render_shows_line_and_caret():
    (e,) = _errors(sub("fc(x, 8", "fc(z, 8"))
    assert e.render().splitlines() == ["m.bolt:4:10: error: 'z' is not defined", "      h = fc(z, 8, relu)",
                                       "             ^"]


def test_check_command_prints_errors_and_exits_1(tmp_path, capsys):
    path = tmp_path / "bad.bolt"
    path.write_text(sub("8, relu", "8, rleu"))
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:4:16: error: unknown activation 'rleu'")
    assert "Traceback" not in err


def test_check_command_one_line_when_valid(tmp_path, capsys):
    path = tmp_path / "ok.bolt"
    path.write_text(BASE)
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"{path}: ok: model m, 2 layers"]


def test_missing_file_is_a_bolt_error(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope.bolt")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_caret_stays_under_the_column_with_tabs():
    (e,) = _errors(sub("  h = fc(x, 8, relu)", "\th = fc(x, 8, rleu)"))
    line, caret = e.render().splitlines()[1:]
    assert (e.location.line, e.location.column) == (4, 15)
    assert line[caret.index("^")] == "r" and line[caret.index("^"):].startswith("rleu")


def test_byte_order_mark_and_crlf_files_check(tmp_path, capsys):
    path = tmp_path / "bom.bolt"
    path.write_bytes(b"\xef\xbb\xbf" + BASE.replace("\n", "\r\n").encode())
    assert main(["check", str(path)]) == 0
