"""The .boltc archive: exact round trip, and every kind of damage raises ModelFileError naming it."""
import json
import zipfile

import numpy as np
import pytest

from boltc.errors import ModelFileError
from boltc.runtime import savefile


def sample_model():
    rng = np.random.default_rng(0)
    return savefile.SavedModel(
        source="model m {}\n", plan={"format": 1, "model": "m", "layers": []},
        params={"hidden": {"W": rng.normal(size=(5, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}},
        lsh={"out": {"tables": rng.integers(-1, 9, size=(2, 4, 3)).astype(np.int32), "seed": 7,
                     "nested": {"proj": rng.normal(size=(4,)).astype(np.float32), "k": [1, 2]}}},
        history={"epochs": [{"epoch": 1, "loss": 0.5}]},
        optimizer={"step": 3, "m": {"hidden": {"W": np.ones((5, 3), np.float32)}}},
    )


def test_round_trip_is_exact(tmp_path):
    m = sample_model()
    p = tmp_path / "m.boltc"
    savefile.save_model(p, m)
    r = savefile.load_model(p)
    assert r.source == m.source and r.plan == m.plan and r.history == m.history
    np.testing.assert_array_equal(r.params["hidden"]["W"], m.params["hidden"]["W"])
    assert r.params["hidden"]["W"].dtype == np.float32
    np.testing.assert_array_equal(r.lsh["out"]["tables"], m.lsh["out"]["tables"])
    np.testing.assert_array_equal(r.lsh["out"]["nested"]["proj"], m.lsh["out"]["nested"]["proj"])
    assert r.lsh["out"]["seed"] == 7 and r.lsh["out"]["nested"]["k"] == [1, 2]
    assert r.optimizer["step"] == 3
    np.testing.assert_array_equal(r.optimizer["m"]["hidden"]["W"], 1)
    assert not list(tmp_path.glob(".*tmp*"))        # no temporary file left behind
    with zipfile.ZipFile(p) as z:
        man = json.loads(z.read("manifest.json"))
        assert set(man["members"]) == set(z.namelist()) - {"manifest.json"}
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())


def rewrite(src, dst, change):
    """Copy a zip, letting change(name, data) alter members (the manifest stays as it was)."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w") as zo:
        for name in zi.namelist():
            data = change(name, zi.read(name))
            if data is not None:
                zo.writestr(name, data)


def test_tampered_member_is_named(tmp_path):
    p, q = tmp_path / "m.boltc", tmp_path / "t.boltc"
    savefile.save_model(p, sample_model())

    def flip(name, data):
        if name == "params/hidden.W.npy":
            data = bytearray(data)
            data[-1] ^= 0x40                         # one weight changed, header intact
            return bytes(data)
        return data
    rewrite(p, q, flip)
    with pytest.raises(ModelFileError, match=r"params/hidden\.W\.npy.*checksum"):
        savefile.load_model(q)


def test_bytes_changed_in_place_are_caught(tmp_path):
    p = tmp_path / "m.boltc"
    savefile.save_model(p, sample_model())
    raw = bytearray(p.read_bytes())
    i = raw.find(b"model m {}")
    raw[i] = ord("M")
    p.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="model.bolt"):
        savefile.load_model(p)


def test_truncated_file(tmp_path):
    p = tmp_path / "m.boltc"
    savefile.save_model(p, sample_model())
    data = p.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 30):
        p.write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match="truncated"):
            savefile.load_model(p)


def test_missing_and_unlisted_members(tmp_path):
    p, q = tmp_path / "m.boltc", tmp_path / "t.boltc"
    savefile.save_model(p, sample_model())
    rewrite(p, q, lambda n, d: None if n == "params/hidden.b.npy" else d)
    with pytest.raises(ModelFileError, match=r"params/hidden\.b\.npy.*missing"):
        savefile.load_model(q)

    def add(name, data):
        return data
    with zipfile.ZipFile(p) as zi, zipfile.ZipFile(q, "w") as zo:
        for n in zi.namelist():
            zo.writestr(n, zi.read(n))
        zo.writestr("params/evil.W.npy", savefile.npy_bytes(np.zeros(2)))
    with pytest.raises(ModelFileError, match="evil.*not listed"):
        savefile.load_model(q)


def test_newer_format_and_not_a_model(tmp_path):
    p, q = tmp_path / "m.boltc", tmp_path / "t.boltc"
    savefile.save_model(p, sample_model())

    def bump(name, data):
        if name == "manifest.json":
            m = json.loads(data)
            m["format_version"] = 99
            return json.dumps(m)
        return data
    rewrite(p, q, bump)
    with pytest.raises(ModelFileError, match="newer"):
        savefile.load_model(q)
    (tmp_path / "x.boltc").write_text("hello")
    with pytest.raises(ModelFileError):
        savefile.load_model(tmp_path / "x.boltc")
    with pytest.raises(ModelFileError, match="not found"):
        savefile.load_model(tmp_path / "none.boltc")


def test_no_pickle_anywhere():
    with pytest.raises(TypeError):
        savefile.npy_bytes(np.array([{"a": 1}], dtype=object))


def test_pickled_array_member_is_refused_even_with_a_matching_checksum(tmp_path):
    import io
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    p = tmp_path / "m.boltc"
    m = sample_model()
    savefile.save_model(p, m)
    _, members = savefile.read_archive(p)
    raw = {n: (v if isinstance(v, bytes) else v) for n, v in members.items()}
    raw["params/hidden.b.npy"] = buf.getvalue()          # manifest recomputed: the hash matches
    savefile.write_archive(p, raw)
    with pytest.raises(ModelFileError, match=r"params/hidden\.b\.npy.*not a valid \.npy"):
        savefile.load_model(p)


def test_large_member_direct_read_round_trip_and_tamper(tmp_path):
    """Members over 1 MiB are read straight from the file (a different path from small ones)."""
    rng = np.random.default_rng(1)
    big = rng.normal(size=(700, 600)).astype(np.float32)          # 1.6 MiB
    m = sample_model()
    m.params["out"] = {"W": big, "b": np.arange(5, dtype=np.int64)}
    p = tmp_path / "big.boltc"
    savefile.save_model(p, m)
    r = savefile.load_model(p)
    np.testing.assert_array_equal(r.params["out"]["W"], big)
    assert r.params["out"]["W"].dtype == np.float32 and r.params["out"]["W"].flags.c_contiguous
    raw = bytearray(p.read_bytes())
    i = raw.find(big[350].tobytes())
    raw[i + 3] ^= 0x01
    p.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match=r"params/out\.W\.npy.*checksum"):
        savefile.load_model(p)
