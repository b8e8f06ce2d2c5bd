import math

from startd_health.core.model import Measurement, ProbeResult, Status
from startd_health.core.verdict import judge


def test_result_json_round_trip():
    result = ProbeResult("container", Status.DEGRADED, "1/2 images launch",
                         {"available": True, "images_ok": ("el9",), "version": "1.4.5", "count": 2, "ratio": 0.5},
                         (Measurement("launch", 0.13, "seconds", {"image": "el9"}),
                          Measurement("broken", float("nan"), "seconds")),
                         started_at=1000.0, duration_seconds=0.5)
    back = ProbeResult.from_json(result.to_json())
    assert back.status is Status.DEGRADED and back.facts == result.facts
    assert back.measurements[0] == result.measurements[0]
    assert math.isnan(back.measurements[1].value)
    assert back.age(now=1010.5) == 10.0


def test_only_failed_is_unusable():
    assert [s.usable for s in Status] == [True, True, False, True]


def test_verdict_lists_failures_first_and_degraded_separately():
    results = [ProbeResult("a", Status.OK), ProbeResult("b", Status.DEGRADED, "slow"),
               ProbeResult("c", Status.FAILED, "broken"), ProbeResult("d", Status.SKIPPED, "no gpu")]
    verdict = judge(results)
    assert not verdict.ok and verdict.failed == ("c",) and verdict.degraded == ("b",)
    assert verdict.reason == "c: broken"
    assert judge(results[:2]).ok and judge(results[:2]).reason == "b: slow"
    assert not judge([], extra_failures=["configuration error"]).ok
