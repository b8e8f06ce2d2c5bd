"""The image catalogue: which images the container probe launches, from three
forms a site may already have:

  named   STARTD_HEALTH_CONTAINER_IMAGES = el9=/path/el9.sif /path/other.sif
  dict    STARTD_HEALTH_CONTAINER_IMAGES_DICT = rhel9:/path,rhel8:/path,default:/path
          (GlideinWMS' SINGULARITY_IMAGES_DICT: the key names the image; the
          `default` key marks the image a job asking for "any" gets)
  found   STARTD_HEALTH_CONTAINER_IMAGE_DIRS = /cvmfs/singularity.opensciencegrid.org/opensciencegrid/*
          a glob: every match is an image; a plain directory: itself when it
          is an unpacked image, else every unpacked image and SIF file in it

Directories are listed in a child process under the probe's budget (a hung
CVMFS mount must not hang the probe). Order = cost: named and dict images
first, in the order given (the site asked for them), then found ones
cheapest first: unpacked directories (Apptainer starts them without a
mount) before SIF files (squashfuse or an extraction), smaller SIFs first.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

from startd_health.core.config import parse_list

DEFAULT_KEY = "default"
LIST_TIMEOUT = 10.0
SIF_SUFFIXES = (".sif", ".simg", ".img")
_NOT_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Image:
    name: str
    path: str
    source: str = "named"   # named | dict | found
    kind: str = ""          # sandbox | sif | "" (not looked at: named and dict images)
    size: int = 0           # bytes, for SIF files found in a directory


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_name(name: str, what: str) -> None:
    """Image names become attribute-name suffixes and list elements: keep them plain."""
    if not _NAME.match(name):
        raise ValueError(f"{what} {name!r} must be letters, digits, '_', '.' or '-'")


def parse_images_dict(text: str) -> Tuple[str, ...]:
    """GlideinWMS' `key:path,key:path` -> normalised `key=path` entries (order kept)."""
    entries, seen = [], set()
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        key, sep, path = item.partition(":")
        key, path = key.strip(), path.strip()
        if not sep or not key or not path:
            raise ValueError(f"entry {item!r} is not key:path (e.g. rhel9:/cvmfs/.../el9:latest)")
        check_name(key, "key")
        if key in seen:
            raise ValueError(f"key {key!r} is given twice")
        seen.add(key)
        entries.append(f"{key}={path}")
    return tuple(entries)


def parse_image_dirs(text: str) -> Tuple[str, ...]:
    dirs = parse_list(text)
    for entry in dirs:
        if not os.path.isabs(entry):
            raise ValueError(f"{entry!r} is not an absolute path or glob")
    return dirs


def image_name(path: str) -> str:
    """A path as an image name: its file name less a SIF suffix, with
    anything but letters, digits, '_', '.', '-' made '_' (osgvo-el9:latest -> osgvo-el9_latest)."""
    base = os.path.basename(path.rstrip("/")) or path
    for suffix in SIF_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return _NOT_NAME.sub("_", base).lstrip("._-") or "image"


# Run as `python -c`: prints one JSON list of [path, kind, size]. A directory
# is an unpacked image when it has .singularity.d or bin and etc (what
# Apptainer's sandboxes and the OSG's unpacked images have).
_LISTER = r"""
import glob, json, os, sys
def kind(p):
    try:
        if os.path.isdir(p):
            if os.path.isdir(os.path.join(p, ".singularity.d")) or (
                    os.path.isdir(os.path.join(p, "bin")) and os.path.isdir(os.path.join(p, "etc"))):
                return "sandbox", 0
            return "dir", 0
        if os.path.isfile(p) and p.endswith((".sif", ".simg", ".img")):
            return "sif", os.path.getsize(p)
    except OSError:
        pass
    return "", 0
out = []
for pattern in sys.argv[1:]:
    matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
    for p in matches:
        k, size = kind(p)
        if k == "dir" and matches == [pattern]:
            for entry in sorted(os.listdir(p)):
                k2, size2 = kind(os.path.join(p, entry))
                if k2 in ("sandbox", "sif"):
                    out.append([os.path.join(p, entry), k2, size2])
        elif k in ("sandbox", "sif") or (k == "dir" and matches != [pattern]):
            out.append([p, "sandbox" if k == "dir" else k, size])
print(json.dumps(out))
"""

# (argv, timeout=...) -> CommandResult: a probe context's run.
Run = Callable[..., object]


def find(run: Run, patterns: Sequence[str], timeout: float = LIST_TIMEOUT) -> Tuple[List[Image], str]:
    """(images found under the directories and globs, '' or why the listing failed)."""
    if not patterns:
        return [], ""
    result = run([sys.executable, "-c", _LISTER, *patterns], timeout=timeout)
    if not result.ok:  # type: ignore[attr-defined]
        return [], f"listing {' '.join(patterns)}: {result.describe_failure()}"  # type: ignore[attr-defined]
    try:
        rows = json.loads(result.stdout)  # type: ignore[attr-defined]
    except ValueError:
        return [], f"listing {' '.join(patterns)}: unreadable answer"
    return [Image(image_name(path), path, "found", kind, int(size)) for path, kind, size in rows], ""


def catalogue(named: Sequence[str], images_dict: Sequence[str], found: Sequence[Image]) -> Tuple[List[Image], str]:
    """(the images to launch in cost order, each path once; the default image's name or '').

    named and images_dict are normalised `name=path` entries. A dict key
    whose path is already listed adds no launch: `default:/p` next to
    `rhel9:/p` marks rhel9 as the default."""
    chosen: List[Image] = []
    by_path = {}
    names = set()
    default = ""

    def add(image: Image) -> Image:
        if image.path in by_path:
            return by_path[image.path]
        name, n = image.name, 2
        while name in names:
            name, n = f"{image.name}-{n}", n + 1
        image = Image(name, image.path, image.source, image.kind, image.size)
        names.add(name)
        by_path[image.path] = image
        chosen.append(image)
        return image

    for entry in named:
        name, _, path = entry.partition("=")
        add(Image(name, path, "named"))
    default_path = ""
    for entry in images_dict:
        key, _, path = entry.partition("=")
        if key == DEFAULT_KEY:
            default_path = path
            continue
        add(Image(key, path, "dict"))
    rank = {"sandbox": 0, "sif": 1}
    for image in sorted(found, key=lambda i: (rank.get(i.kind, 2), i.size, i.path)):
        add(image)
    if default_path:
        default = add(Image(DEFAULT_KEY, default_path, "dict")).name
    return chosen, default


def capped(chosen: Sequence[Image], cap: int) -> Tuple[List[Image], List[Image]]:
    """(images to launch, images over the cap): the cap counts found images
    only (a glob can match hundreds); named and dict images are the site's
    explicit list, bounded by the probe's budget alone."""
    keep, over, found = [], [], 0
    for image in chosen:
        if image.source == "found":
            found += 1
            if found > cap:
                over.append(image)
                continue
        keep.append(image)
    return keep, over


def over_budget(remaining: float, launch_timeout: float, slowest: float) -> bool:
    """Whether the next launch no longer fits: it needs twice the slowest
    launch so far (at least 2 s), at most the launch timeout. A launch cut
    short by the budget would read as a broken image: better not start it."""
    return remaining < min(launch_timeout, max(2.0, 2 * slowest))


def untested_reason(count: int, cap: int, by_cap: bool, names: Sequence[str]) -> str:
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    why = (f"found images over the cap of {cap} (STARTD_HEALTH_CONTAINER_MAX_IMAGES)" if by_cap
           else "the probe's budget ran out (STARTD_HEALTH_CONTAINER_TIMEOUT)")
    return f"{count} image{'s' if count != 1 else ''} not tested, {why}: {shown}"
