"""Read what the create stages need from a Kiwi-NG image description (repositories, build type).

Only plain reading: kiwi itself validates the description when it builds. The standard library parser is
safe enough for this user input: expat >= 2.4.1 (Python 3.11 bundles 2.5) refuses entity-expansion bombs
and ElementTree never fetches external entities.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET  # noqa: S405 - see the module docstring
from dataclasses import dataclass
from pathlib import Path


class DescriptionError(ValueError):
    pass


@dataclass(frozen=True)
class Repository:
    path: str
    type: str
    alias: str
    distribution: str
    components: str


@dataclass(frozen=True)
class BuildType:
    image: str
    filesystem: str
    initrd_system: str
    archive: str = ""  # kis: "false" keeps kiwi from packing its results into a tar.xz (default: it does)
    compressed: str = ""  # kis: "true" xz-compresses the root file system image


PACKAGED_TYPES = ("tbz", "kis")


def packaging_refusal(build_type: BuildType) -> str:
    """Why IMS could not package what kiwi would build of this type; '' when it can.

    Asked before kiwi runs, so a recipe that cannot become an IMS image fails in seconds, not after a build.
    """
    kind = build_type.image
    if kind not in PACKAGED_TYPES:
        return f"build type {kind!r} is not supported; use one of {', '.join(PACKAGED_TYPES)}"
    if kind != "kis":
        return ""
    if build_type.filesystem != "squashfs":
        given = f'filesystem="{build_type.filesystem}"' if build_type.filesystem else "no filesystem attribute"
        return f'a kis image needs filesystem="squashfs" (IMS boots a squashfs root); the recipe has {given}'
    if build_type.compressed.lower() == "true":
        return 'a kis image with compressed="true" has an xz-compressed root that cannot boot as is; drop compressed'
    if build_type.initrd_system.lower() == "none":
        return 'a kis image needs an initrd; the recipe has initrd_system="none"'
    return ""


@dataclass(frozen=True)
class Description:
    file: Path
    name: str
    package_manager: str
    repositories: list[Repository]
    build_type: BuildType


def description_file(recipe_dir: Path) -> Path:
    """kiwi's own lookup: `config.xml`, else the one `*.kiwi` file."""
    config = recipe_dir / "config.xml"
    if config.is_file():
        return config
    candidates = sorted(recipe_dir.glob("*.kiwi"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DescriptionError(f"no config.xml or *.kiwi description in {recipe_dir}")
    raise DescriptionError(f"several *.kiwi descriptions in {recipe_dir}: {', '.join(p.name for p in candidates)}")


def _types(root: ET.Element) -> list[ET.Element]:
    return [node for prefs in root.findall("preferences") for node in prefs.findall("type")]


def _build_type(root: ET.Element) -> BuildType:
    types = _types(root)
    if not types:
        raise DescriptionError("the description has no <preferences><type> element")
    # kiwi's default when no --type is given: the type marked primary, else the first one.
    chosen = next((node for node in types if node.get("primary", "").lower() == "true"), types[0])
    return BuildType(
        image=chosen.get("image", ""),
        filesystem=chosen.get("filesystem", ""),
        initrd_system=chosen.get("initrd_system", ""),
        archive=chosen.get("archive", ""),
        compressed=chosen.get("compressed", ""),
    )


def read_description(recipe_dir: Path) -> Description:
    path = description_file(recipe_dir)
    try:
        root = ET.parse(path).getroot()  # noqa: S314 - see the module docstring
    except ET.ParseError as error:
        raise DescriptionError(f"{path.name} is not well-formed XML: {error}") from error
    if root.tag != "image":
        raise DescriptionError(f"{path.name}: the root element is <{root.tag}>, not <image>")
    repositories = []
    # Only top-level repositories, as kiwi and the original treat them (profile-less).
    for repo in root.findall("repository"):
        source = repo.find("source")
        if source is None or not source.get("path"):
            continue
        repositories.append(
            Repository(
                path=source.get("path", "").strip(),
                type=repo.get("type", "rpm-md"),
                alias=repo.get("alias", ""),
                distribution=repo.get("distribution", ""),
                components=repo.get("components", ""),
            )
        )
    manager = ""
    for prefs in root.findall("preferences"):
        node = prefs.find("packagemanager")
        if node is not None and node.text:
            manager = node.text.strip()
            break
    return Description(
        file=path,
        name=root.get("name", ""),
        package_manager=manager,
        repositories=repositories,
        build_type=_build_type(root),
    )
