"""Synthetic startd slot ads for the pool exporter's tests and benchmark:
machines with partitionable + dynamic slots (or static slots), a few with a
second startd (glideins), and a deterministic mix of health states.

`advertise()` pushes them into a REAL collector with condor_advertise run
inside the test root filesystem (as root: the personal pool's ALLOW_WRITE
= * and FS authentication accept it), many ads per file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, List

IMAGES = ("el9", "el8")
REPOS = ("atlas.cern.ch", "cms.cern.ch")
ADS_PER_FILE = 5000


@dataclass
class Expected:
    """What the pool exporter should find in the synthetic machines."""

    nodes: Dict[str, int] = field(default_factory=lambda: {"healthy": 0, "unhealthy": 0, "stale": 0, "unknown": 0})
    failed: Dict[str, int] = field(default_factory=dict)      # probe -> fresh machines where it failed
    degraded: Dict[str, int] = field(default_factory=dict)
    repo_failed: Dict[str, int] = field(default_factory=dict)
    image_failed: Dict[str, int] = field(default_factory=dict)
    launches: Dict[str, int] = field(default_factory=dict)    # image -> fresh machines with a launch time
    unhealthy_machines: List[str] = field(default_factory=list)
    slot_ads: int = 0                                          # everything advertised
    queried_ads: int = 0                                       # what the pool exporter asks for (no dynamic slots)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "{ " + ", ".join(json.dumps(x) for x in v) + " }"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def machines(count: int, now: int, dynamic: int = 2, prefix: str = "synthetic"):
    """(ads as dicts, Expected). Machine i's health follows i % 10:
    0 cvmfs failed (atlas), 1 container failed (el8), 2 stale, 3 no verdict,
    4 container degraded, else healthy. Slots: i % 3 == 0 two static
    slots, else one partitionable slot with `dynamic` dynamic ones whose
    attributes contradict their parent (the parent must win); i % 25 == 5
    also a second, older startd (a glidein) on the same machine."""
    ads: List[dict] = []
    exp = Expected()
    for i in range(count):
        machine = f"{prefix}{i:06d}.example.org"
        kind = i % 10
        health: dict = {}
        if kind != 3:
            ok = kind not in (0, 1)
            failed = ["cvmfs"] if kind == 0 else ["container"] if kind == 1 else []
            images_failed = ["el8"] if kind == 1 else []
            images_ok = [x for x in IMAGES if x not in images_failed]
            repos_failed = ["atlas.cern.ch"] if kind == 0 else []
            health = {
                "StartdHealthOk": ok,
                "StartdHealthTimestamp": now - 3600 if kind == 2 else now - (i % 60),
                "StartdHealthFailedProbes": failed,
                "StartdHealthDegradedProbes": ["container"] if kind == 4 else [],
                "StartdHealthContainerStatus": "failed" if kind == 1 else "degraded" if kind == 4 else "ok",
                "StartdHealthCvmfsStatus": "failed" if kind == 0 else "ok",
                "StartdHealthContainerImagesOk": images_ok,
                "StartdHealthContainerImagesFailed": images_failed,
                "StartdHealthCvmfsReposOk": [r for r in REPOS if r not in repos_failed],
                "StartdHealthCvmfsReposFailed": repos_failed,
            }
            for image in images_ok:
                health[f"StartdHealthContainerLaunchSeconds_{image}"] = round(0.08 + 0.05 * (i % 7), 3)
            state = "stale" if kind == 2 else "healthy" if ok else "unhealthy"
            exp.nodes[state] += 1
            if state == "unhealthy":
                exp.unhealthy_machines.append(machine)
            if state != "stale":
                for probe in failed:
                    exp.failed[probe] = exp.failed.get(probe, 0) + 1
                if kind == 4:
                    exp.degraded["container"] = exp.degraded.get("container", 0) + 1
                for repo in repos_failed:
                    exp.repo_failed[repo] = exp.repo_failed.get(repo, 0) + 1
                for image in images_failed:
                    exp.image_failed[image] = exp.image_failed.get(image, 0) + 1
                for image in images_ok:
                    exp.launches[image] = exp.launches.get(image, 0) + 1
        else:
            exp.nodes["unknown"] += 1
        base = {"MyType": "Machine", "TargetType": "Job", "Machine": machine, "Arch": "X86_64", "OpSys": "LINUX",
                "MyAddress": f"<10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:9618>"}
        base["StartdIpAddr"] = base["MyAddress"]
        if i % 3 == 0:
            for slot in (1, 2):
                ads.append(dict(base, Name=f"slot{slot}@{machine}", SlotType="Static", SlotID=slot, **health))
        else:
            ads.append(dict(base, Name=f"slot1@{machine}", SlotType="Partitionable", SlotID=1, **health))
            contradicting = dict(health)
            if "StartdHealthOk" in health:
                contradicting["StartdHealthOk"] = not health["StartdHealthOk"]
                contradicting["StartdHealthTimestamp"] = now
            for d in range(1, dynamic + 1):
                ads.append(dict(base, Name=f"slot1_{d}@{machine}", SlotType="Dynamic", SlotID=1, **contradicting))
        if i % 25 == 5 and i % 3 != 0 and health:  # beside a partitionable slot: the fresher verdict wins
            older = dict(health, StartdHealthOk=False, StartdHealthTimestamp=health["StartdHealthTimestamp"] - 120,
                         StartdHealthFailedProbes=["container"])
            ads.append(dict(base, Name=f"slot1@glidein_2@{machine}", SlotType="Partitionable", SlotID=1,
                            MyAddress=base["MyAddress"].replace(":9618", ":9619"), **older))
    exp.slot_ads = len(ads)
    exp.queried_ads = sum(1 for ad in ads if ad["SlotType"] != "Dynamic")
    return ads, exp


def ad_text(ad: dict) -> str:
    return "".join(f"{k} = {_value(v)}\n" for k, v in ad.items())


def advertise(pool, ads: List[dict], directory: str = "/tmp/synthetic-ads") -> None:
    """condor_advertise -multiple UPDATE_STARTD_AD, ADS_PER_FILE ads per file."""
    pool.sh(f"rm -rf {directory} && mkdir -p {directory}")
    files = []
    for start in range(0, len(ads), ADS_PER_FILE):
        name = f"{directory}/ads-{start // ADS_PER_FILE:04d}"
        pool.write(name, "\n".join(ad_text(ad) for ad in ads[start:start + ADS_PER_FILE]))
        files.append(name)
    for name in files:
        proc = pool.enter("condor_advertise", "-multiple", "UPDATE_STARTD_AD", name, timeout=600)
        assert "Sent" in proc.stdout, proc.stdout + proc.stderr
