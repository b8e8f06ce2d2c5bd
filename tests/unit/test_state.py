import json
import os

from startd_health.core.model import ProbeResult, Status
from startd_health.core.state import StateDir, write_atomic


def test_write_atomic_mode_and_no_leftovers(tmp_path):
    path = tmp_path / "x.prom"
    write_atomic(str(path), b"one")
    write_atomic(str(path), b"two")
    assert path.read_bytes() == b"two" and oct(path.stat().st_mode & 0o777) == "0o644"
    assert os.listdir(tmp_path) == ["x.prom"]


def test_corrupt_or_truncated_result_is_ignored(tmp_path):
    state = StateDir(str(tmp_path))
    state.ensure()
    state.save(ProbeResult("good", Status.OK, "fine"))
    good = json.loads((tmp_path / "results" / "good.json").read_text())
    (tmp_path / "results" / "half.json").write_text(json.dumps(good)[:20])  # a write cut short
    (tmp_path / "results" / "junk.json").write_text('{"probe": "junk", "status": "maybe"}')
    assert list(state.load_all()) == ["good"]
    assert state.load("half") is None


def test_lock_is_exclusive_per_probe_and_released(tmp_path):
    state = StateDir(str(tmp_path))
    state.ensure()
    with state.lock("a") as first, state.lock("a") as second, state.lock("b") as other:
        assert first.try_acquire() and not second.acquire(0.1) and other.try_acquire()
    with state.lock("a") as again:
        assert again.try_acquire()


def test_old_temporaries_of_killed_writes_are_cleared(tmp_path):
    state = StateDir(str(tmp_path))
    state.ensure()
    old = tmp_path / "results" / ".container.json.abc.tmp"
    young = tmp_path / "results" / ".container.json.def.tmp"
    old.write_text("{")
    young.write_text("{")
    os.utime(old, (0, 0))
    state.ensure()
    assert not old.exists() and young.exists()  # a young one may belong to a write in progress
