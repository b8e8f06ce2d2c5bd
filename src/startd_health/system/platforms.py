"""Platform names: what OS an image is, in GlideinWMS' convention, and whether
an image's name claims another one. Pure: the facts come from the inside
script's platform section (system/inside.py).

Canonical names (GlideinWMS' `REQUIRED_OS` / `SINGULARITY_IMAGES_DICT` keys):

  rhel<major>     the RHEL family: RHEL, CentOS (Linux and Stream), AlmaLinux,
                  Rocky, Scientific Linux, Oracle Linux, and any os-release
                  whose ID_LIKE says rhel (CircleLinux, Navy, EuroLinux ...)
  ubuntu<major>   ubuntu22 for 22.04
  debian<major>   debian12; testing and sid (no VERSION_ID) by their codename:
                  "forky/sid" is debian14
  <id><major>     any other os-release: its ID without punctuation and the
                  major version (fedora40, opensuseleap15, alpine3, amzn2023)
  ""              nothing readable (no os-release, no release file): the
                  image's platform is unknown; it is published as such and
                  offered for no platform
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

# os-release IDs of the RHEL family (rhel, centos, almalinux, rocky, scientific, ol).
RHEL_FAMILY = frozenset({"rhel", "centos", "almalinux", "rocky", "scientific", "ol", "redhat"})
DEBIAN_CODENAMES = {"buzz": 1, "rex": 1, "bo": 1, "hamm": 2, "slink": 2, "potato": 2, "woody": 3, "sarge": 3,
                    "etch": 4, "lenny": 5, "squeeze": 6, "wheezy": 7, "jessie": 8, "stretch": 9, "buster": 10,
                    "bullseye": 11, "bookworm": 12, "trixie": 13, "forky": 14, "duke": 15}
UBUNTU_CODENAMES = {"xenial": 16, "bionic": 18, "focal": 20, "jammy": 22, "noble": 24, "plucky": 25,
                    "questing": 25, "resolute": 26}
# /etc/redhat-release first words -> os-release ID (images older than os-release: EL6 and before).
_REDHAT_RELEASE = (("red hat", "rhel"), ("centos", "centos"), ("scientific", "scientific"), ("alma", "almalinux"),
                   ("rocky", "rocky"), ("oracle", "ol"), ("fedora", "fedora"))
_NOT_ID = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Platform:
    name: str          # canonical: rhel9, debian12, ... ; "" when unknown
    os_name: str = ""  # PRETTY_NAME (or NAME), as the image says it
    os_id: str = ""
    os_version: str = ""
    arch: str = ""
    glibc: str = ""    # glibc version ("2.34"), "musl 1.2.4", or "" when not found


def unquote(value: str) -> str:
    """An os-release value (shell-quoted or bare) as text."""
    value = value.strip()
    try:
        words = shlex.split(value)
    except ValueError:
        return value.strip("\"'")
    return " ".join(words)


def _major(version: str) -> str:
    match = re.match(r"\s*(\d+)", version)
    return match.group(1) if match else ""


def canonical(os_id: str, version_id: str, id_like: str = "", codename: str = "") -> str:
    """os-release ID, VERSION_ID, ID_LIKE, VERSION_CODENAME -> canonical name ('' when unknown)."""
    os_id = os_id.strip().lower()
    major = _major(version_id)
    likes = set(id_like.lower().split())
    if os_id in RHEL_FAMILY or (os_id != "fedora" and ("rhel" in likes or "centos" in likes) and major
                                and 5 <= int(major) <= 12):
        return f"rhel{major}" if major else ""
    if os_id == "debian" and not major:
        major = str(DEBIAN_CODENAMES.get(codename.strip().lower(), ""))
    if os_id == "ubuntu" and not major:
        major = str(UBUNTU_CODENAMES.get(codename.strip().lower(), ""))
    short = _NOT_ID.sub("", os_id)
    return f"{short}{major}" if short and major else ""


def _from_redhat_release(text: str) -> Tuple[str, str]:
    """'CentOS release 6.10 (Final)' -> ('centos', '6.10')."""
    lower = text.lower()
    os_id = next((i for word, i in _REDHAT_RELEASE if lower.startswith(word)), "")
    match = re.search(r"release\s+(\d[\d.]*)", lower)
    return os_id, match.group(1) if match else ""


def glibc_version(libc: str) -> str:
    """The inside script's libc line -> '2.34' (glibc), 'musl 1.2.4', or ''."""
    libc = libc.strip()
    if libc.startswith("musl"):
        return libc
    match = re.search(r"(?:glibc|version)\s+(\d+\.\d+(?:\.\d+)?)", libc, re.IGNORECASE)
    return match.group(1) if match else ""


def identify(os_release: Mapping[str, str], arch: str = "", libc: str = "") -> Platform:
    """The platform section's facts (raw os-release values by key, plus the
    redhat-release / debian_version lines) -> Platform."""
    values: Dict[str, str] = {k: unquote(v) for k, v in os_release.items()}
    os_id, version = values.get("ID", ""), values.get("VERSION_ID", "")
    name = values.get("PRETTY_NAME") or values.get("NAME", "")
    if not os_id and values.get("redhat-release"):
        os_id, version = _from_redhat_release(values["redhat-release"])
        name = values["redhat-release"]
    if os_id == "debian" and not version and _major(values.get("debian_version", "")):
        version = values["debian_version"]   # stable releases' os-release can lack VERSION_ID in old images
    platform = canonical(os_id, version, values.get("ID_LIKE", ""), values.get("VERSION_CODENAME", ""))
    return Platform(platform, name, os_id.lower(), version, arch.strip(), glibc_version(libc))


# ---------------------------------------------------------------- claims
# An image name that reads as a platform is a claim: el9, rhel9, centos7,
# sl7, alma9, rocky8, ubuntu22 (or ubuntu22.04, ubuntu2204), debian12, and
# the Debian and Ubuntu codenames. A word must start the name or follow a
# non-letter (osgvo-el9, cms_el8) so that e.g. "model10" claims nothing.
_CLAIM = re.compile(r"(?<![a-z])(rhel|el|centos|cc|sl|scientific|alma|almalinux|rocky|rockylinux|ol|oracle|"
                    r"ubuntu|debian)[-_]?(\d+)", re.IGNORECASE)
_CODENAME = re.compile(r"(?<![a-z])(" + "|".join(sorted(set(DEBIAN_CODENAMES) | set(UBUNTU_CODENAMES)
                                                       - {"bo", "rex", "buzz", "duke"}, key=len, reverse=True))
                       + r")(?![a-z])", re.IGNORECASE)


def claimed(image_name: str) -> Optional[str]:
    """The canonical platform an image name claims, or None when it claims none
    (or claims two different ones: no single claim to check)."""
    found = set()
    for family, number in _CLAIM.findall(image_name):
        family = family.lower()
        if family == "ubuntu":
            found.add("ubuntu" + (number[:2] if len(number) == 4 else number))
        elif family == "debian":
            found.add("debian" + number)
        else:
            found.add("rhel" + number)
    for codename in _CODENAME.findall(image_name):
        codename = codename.lower()
        found.add(f"debian{DEBIAN_CODENAMES[codename]}" if codename in DEBIAN_CODENAMES
                  else f"ubuntu{UBUNTU_CODENAMES[codename]}")
    return found.pop() if len(found) == 1 else None


def contradiction(image_name: str, platform: Platform) -> str:
    """'' when the name claims nothing or the right platform, else why it is wrong."""
    claim = claimed(image_name)
    if claim is None or claim == platform.name:
        return ""
    inside = platform.name or "of unknown platform"
    detail = f" ({platform.os_name})" if platform.os_name else ""
    return f"image {image_name} is {inside} inside{detail}, its name says {claim}"
