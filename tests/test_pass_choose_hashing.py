"""choose_hashing: before/after pairs as .bolt text. The after text spells out the full hash spec the
pass must produce (values computed by hand from BOLT's rules, DESIGN.md section 3)."""
from boltc import ir
from boltc.frontend import parse
from boltc.passes.choose_hashing import choose_hashing
from boltc.passes.choose_sparsity import choose_sparsity
from boltc.passes.infer_shapes import infer_shapes
from boltc.passes.validate import validate

SCHEDULE = "rehash_every=0.25, rebuild_every=0.05, freeze_after=1"
# the output layer's training fill (runtime/lsh/index.py): a quarter of the set, drawn by label frequency
FILL = "random_share=0.25, negatives=frequency"


def model(width, scores, data=""):
    return f'''model m {{
  input x: sparse(100)
  target y: multilabel({width})
  h = fc(x, 16, relu, sparsity=1.0)
  s = fc(h, {width}, softmax{scores})
  loss cross_entropy(s, y)
  {data}
}}'''


def nodes(g):
    return [ir.replace(n, loc=ir.Loc()) for n in ir.nodes(g)]


def expect(before, after):
    got = choose_hashing(choose_sparsity(infer_shapes(validate(parse(before)))))
    want = infer_shapes(parse(after))
    # dense layers: the pass writes hash=none
    assert nodes(got) == nodes(want), (ir.format_graph(got), ir.format_graph(want))
    return got


def test_amazon670k_output_layer():
    # K = round(log2(128/0.005)/3) = round(4.88) = 5; range = 15; L = round(0.005*32768) = 164;
    # reservoir = 4 * (670091 // 32768) = 4 * 20 = 80; rows >= 100k -> rebuild every 1/100 epoch
    data = "data { train synthetic(rows=100000) }"
    got = expect(model(670091, "", data), model(670091, ", sparsity=0.005, hash=dwta(hashes=5, range=15, tables=164, "
                 f"reservoir=80, bin_size=8, rehash_every=0.25, rebuild_every=0.01, freeze_after=1, {FILL})", data).replace(
                 "sparsity=1.0)", "sparsity=1.0, hash=none)"))
    chosen = {c.key: c.value for c in got.graph["choices"] if c.node == "s"}
    assert (chosen["hash.hashes"], chosen["hash.range_bits"], chosen["hash.tables"], chosen["hash.reservoir"]) == \
        (5, 15, 164, 80)
    assert chosen["hash.memory"] == "1,720 MB"


def test_delicious_width_matches_bolts_run():
    # PEERS.md: BOLT on delicious (983 labels) chose 0.1, DWTA K=3, L=51, range 512 (9 bits), reservoir 4
    expect(model(983, ", sparsity=0.1"), model(983, f", sparsity=0.1, hash=dwta(hashes=3, range=9, tables=51, reservoir=4, "
                                      f"bin_size=8, {SCHEDULE}, {FILL})").replace("sparsity=1.0)", "sparsity=1.0, hash=none)"))


def test_partial_dwta_keeps_what_was_given():
    # range given: hashes = 12 // 3 = 4; L = round(0.02 * 4096) = 82; reservoir = 4 * max(5000 // 4096, 1) = 4
    got = expect(model(5000, ", sparsity=0.02, hash=dwta(range=12, reservoir=32)"),
                 model(5000, f", sparsity=0.02, hash=dwta(range=12, reservoir=32, hashes=4, tables=82, bin_size=8, "
                             f"{SCHEDULE}, {FILL})").replace("sparsity=1.0)", "sparsity=1.0, hash=none)"))
    keys = {c.key for c in got.graph["choices"] if c.node == "s"}
    assert "hash.reservoir" not in keys and "hash.tables" in keys


def test_srp_uses_one_bit_per_hash():
    # sparsity 0.1: DWTA rule range = 9 -> srp hashes 9, range 9; L = round(0.1 * 512) = 51; reservoir 4*(983//512)
    expect(model(983, ", sparsity=0.1, hash=srp()"), model(983, f", sparsity=0.1, hash=srp(hashes=9, tables=51, reservoir=4, "
                                                  f"{SCHEDULE}, {FILL})").replace("sparsity=1.0)", "sparsity=1.0, hash=none)"))


def test_dense_output_gets_hash_none():
    got = expect(model(200, ""), model(200, ", sparsity=1.0, hash=none").replace("sparsity=1.0)",
                                                                                  "sparsity=1.0, hash=none)"))
    assert not [c for c in got.graph["choices"] if c.key.startswith("hash")]


def test_hash_given_but_layer_dense_by_rule_is_explained():
    got = choose_hashing(choose_sparsity(infer_shapes(parse(model(200, ", hash=dwta(tables=3)")))))
    assert ir.node(got, "s").attrs["hash"] == "none"
    assert any("not used" in c.reason for c in got.graph["choices"] if c.node == "s")


def test_sparse_hidden_layer_gets_no_fill_options():
    # the fill's share and frequency weighting apply to the labelled output only
    src = model(2000, ", sparsity=0.05").replace("h = fc(x, 16, relu, sparsity=1.0)", "h = fc(x, 2000, relu, sparsity=0.1)")
    got = choose_hashing(choose_sparsity(infer_shapes(validate(parse(src)))))
    assert "negatives" not in ir.node(got, "h").attrs["hash"]
    assert ir.node(got, "s").attrs["hash"]["negatives"] == "frequency"
