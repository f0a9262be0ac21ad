"""Closed sets of values the CLI offers as choices (listed in --help, checked before any request).

They mirror the server's rules in ims.domain.schemas (a test keeps them equal).
"""

from __future__ import annotations

from enum import StrEnum


class Arch(StrEnum):
    x86_64 = "x86_64"
    aarch64 = "aarch64"


class Distro(StrEnum):
    sles12 = "sles12"
    sles15 = "sles15"
    centos7 = "centos7"
    debian12 = "debian12"


class RecipeType(StrEnum):
    kiwi_ng = "kiwi-ng"
    packer = "packer"


def value(choice: StrEnum | None) -> str | None:
    return None if choice is None else choice.value


def _listed(choices: type[StrEnum]) -> str:
    names = [choice.value for choice in choices]
    return ", ".join(names[:-1]) + " or " + names[-1]


ARCH_HELP = f"Architecture: {_listed(Arch)}."
DISTRO_HELP = f"Linux distribution: {_listed(Distro)}."
RECIPE_TYPE_HELP = f"Recipe type: {_listed(RecipeType)}."
