"""Adapter names and versions: the safe charset, `name@version` references, version numbering."""

from __future__ import annotations

import re
from collections.abc import Iterable

from adapters.errors import AdapterRefused

# Names reach file paths, vLLM and HTTP headers: a charset that needs no escaping anywhere and
# cannot climb out of a folder (no separators, never starting with a dot).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"
ADAPTER_REF_PATTERN = NAME_PATTERN[:-1] + "@" + VERSION_PATTERN[1:]

_NAME = re.compile(NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)
_NUMBERED = re.compile(r"^v([0-9]+)$")


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise AdapterRefused(
            "name", f"{name!r} is not a valid adapter name: letters, digits, '.', '_', '-'"
        )
    return name


def check_version(version: str) -> str:
    if not _VERSION.fullmatch(version):
        raise AdapterRefused(
            "name", f"{version!r} is not a valid version: letters, digits, '.', '_', '-'"
        )
    return version


def parse_ref(ref: str) -> tuple[str, str]:
    """`name@version` -> (name, version), both checked."""
    name, at, version = ref.partition("@")
    if not at:
        raise AdapterRefused("name", f"{ref!r} is not an adapter version: use NAME@VERSION")
    return check_name(name), check_version(version)


def next_version(existing: Iterable[str]) -> str:
    """`v<n+1>` after the highest `v<n>` among `existing` (other version names are ignored)."""
    numbers = [int(m.group(1)) for v in existing if (m := _NUMBERED.fullmatch(v))]
    return f"v{max(numbers, default=0) + 1}"
