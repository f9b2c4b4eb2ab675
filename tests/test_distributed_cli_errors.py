"""Bad distributed settings fail at once with a clear message: no silent fallback, no minutes of retries."""
from pathlib import Path

import pytest

from boltc.cli import main

TINY = str(Path(__file__).parents[1] / "models" / "tiny.bolt")


def test_zero_workers_is_an_error_not_a_single_process_run(tmp_path, capsys):
    assert main(["train", TINY, "--workers", "0", "-o", str(tmp_path / "t.boltc"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "workers must be at least 1" in err or "pip install boltc[distributed]" in err
    assert not (tmp_path / "t.boltc").exists()


def test_unreachable_ray_address_fails_fast_and_names_it():
    pytest.importorskip("ray")
    from boltc.runtime.distributed.cluster import DistributedError, connect
    with pytest.raises(DistributedError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        connect("127.0.0.1:1", workers=2)
    with pytest.raises(DistributedError, match="not auto, host:port"):
        connect("nonsense", workers=2)


def test_settings_the_workers_do_not_apply_are_refused_not_ignored(tmp_path, capsys):
    src = Path(TINY).read_text().replace("    seed      7\n", "    seed      7\n    class_weights balanced\n")
    assert "class_weights balanced" in src
    bolt = tmp_path / "cw.bolt"
    bolt.write_text(src)
    assert main(["train", str(bolt), "--workers", "2", "-o", str(tmp_path / "t.boltc"), "--no-progress"]) == 1
    assert "class_weights: not supported by distributed training" in capsys.readouterr().err
    assert not (tmp_path / "t.boltc").exists()
