"""Upload a recipe and register it, as ims-python-helper's `recipe_upload` does.

Order (the original's): look for a recipe of the same name; if one already links an object with the same
md5 and template dictionary, it is the answer; if one was created but never linked, finish that one; else
POST a new record. Then upload `<ims bucket>/recipes/<id>/recipe.tar.gz` (`application/x-compressed-tar`,
metadata `md5sum`) and PATCH the record's link. A record this call created goes again if the upload fails.

A directory is packed into a gzipped tar first, deterministically, so packing the same tree twice gives the
same md5 and a repeated upload is recognised.
"""

from __future__ import annotations

import gzip
import logging
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ims.artifacts.s3 import ArtifactStore
from ims.client.resources import Ims, Record
from ims.client.transfer import NoProgress, TrackedStore, file_md5
from ims.domain.links import S3Location, link_location, make_link

log = logging.getLogger(__name__)

RECIPE_CONTENT_TYPE = "application/x-compressed-tar"
RECIPE_OBJECT = "recipe.tar.gz"
_GZIP_MAGIC = b"\x1f\x8b"


class RecipeError(Exception):
    """The recipe source cannot be used (not a directory or a gzipped tar, or no Kiwi description)."""


@dataclass(frozen=True)
class RecipeUpload:
    recipe: Record
    action: Literal["created", "resumed", "existing"]
    md5: str


def recipe_location(bucket: str, recipe_id: str) -> S3Location:
    return S3Location(bucket, f"recipes/{recipe_id}/{RECIPE_OBJECT}")


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Owners on the packing machine mean nothing inside a job; the recipe is unpacked as root.
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def pack_recipe(directory: Path, target: Path) -> None:
    """tar.gz of the directory's contents (`./config.xml`, ...), as `tar czf X -C DIR .` would make.

    Entries are sorted and the gzip header has no timestamp, so the bytes depend only on the tree.
    """
    with (
        target.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        archive.add(directory, arcname=".", recursive=True, filter=_normalise)


def _check_kiwi_description(directory: Path) -> None:
    if not (directory / "config.xml").is_file() and not any(directory.glob("*.kiwi")):
        raise RecipeError(f"{directory} holds no Kiwi description (config.xml or *.kiwi)")


@contextmanager
def recipe_archive(source: Path, *, recipe_type: str = "kiwi-ng") -> Iterator[Path]:
    """A gzipped tar for `source`: the file itself, or a temporary archive packed from a directory."""
    if source.is_dir():
        if recipe_type == "kiwi-ng":
            _check_kiwi_description(source)
        with tempfile.TemporaryDirectory(prefix="ims-recipe-") as scratch:
            target = Path(scratch) / RECIPE_OBJECT
            pack_recipe(source, target)
            yield target
        return
    if not source.is_file():
        raise RecipeError(f"{source} is neither a directory nor a file")
    with source.open("rb") as handle:
        if handle.read(2) != _GZIP_MAGIC:
            raise RecipeError(f"{source} is not a gzipped tar archive (only .tar.gz / .tgz recipes are supported)")
    try:
        with tarfile.open(source, "r:gz") as archive:
            archive.next()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise RecipeError(f"{source} is not a readable tar.gz: {exc}") from None
    yield source


def _template_of(recipe: Record) -> dict[str, str]:
    pairs = recipe.get("template_dictionary") or []
    return {str(pair.get("key")): str(pair.get("value")) for pair in pairs if isinstance(pair, dict)}


def _find_existing(
    ims: Ims, store: ArtifactStore, name: str, md5: str, template: Mapping[str, str]
) -> tuple[Record | None, Record | None]:
    """(a linked recipe with the same content, a recipe of that name that never got its link)."""
    unlinked: Record | None = None
    for recipe in ims.recipes.list():
        if recipe.get("name") != name:
            continue
        link = recipe.get("link")
        if not link or not link.get("path"):
            unlinked = recipe
            continue
        info = store.head(link_location(link))
        if info is not None and info.metadata.get("md5sum") == md5 and _template_of(recipe) == dict(template):
            return recipe, None
    return None, unlinked


def upload_recipe(
    ims: Ims,
    store: ArtifactStore,
    *,
    name: str,
    source: Path,
    linux_distribution: str,
    recipe_type: str = "kiwi-ng",
    arch: str | None = None,
    require_dkms: bool | None = None,
    template_dictionary: Mapping[str, str] | None = None,
    bucket: str = "ims",
) -> RecipeUpload:
    template = dict(template_dictionary or {})
    progress = store.progress if isinstance(store, TrackedStore) else NoProgress()
    with recipe_archive(source, recipe_type=recipe_type) as archive:
        md5 = file_md5(archive, progress, "checksum recipe")
        existing, unlinked = _find_existing(ims, store, name, md5, template)
        if existing is not None:
            progress.note(f"recipe {name!r} is already uploaded as {existing['id']}")
            return RecipeUpload(existing, "existing", md5)
        if unlinked is not None:
            recipe_id = str(unlinked["id"])
            progress.note(f"finishing the upload of recipe {recipe_id}, created earlier without its archive")
            recipe = _upload_and_link(ims, store, bucket, recipe_id, archive, md5, template, created=False)
            return RecipeUpload(recipe, "resumed", md5)
        record = ims.recipes.create(
            name,
            linux_distribution=linux_distribution,
            recipe_type=recipe_type,
            arch=arch,
            require_dkms=require_dkms,
            template_dictionary=template or None,
        )
        progress.note(f"created recipe record {record['id']}")
        recipe = _upload_and_link(ims, store, bucket, str(record["id"]), archive, md5, {}, created=True)
        return RecipeUpload(recipe, "created", md5)


def _upload_and_link(
    ims: Ims,
    store: ArtifactStore,
    bucket: str,
    recipe_id: str,
    archive: Path,
    md5: str,
    template: Mapping[str, str],
    *,
    created: bool,
) -> Record:
    location = recipe_location(bucket, recipe_id)
    try:
        etag, sent_md5 = store.upload_file(
            archive, location, content_type=RECIPE_CONTENT_TYPE, metadata={"md5sum": md5}
        )
        if sent_md5 != md5:
            raise RecipeError(f"{archive} changed while it was uploaded")
        return ims.recipes.update(recipe_id, link=make_link(location, etag), template_dictionary=template or None)
    except BaseException:
        if created:
            _undo(ims, store, recipe_id, location)
        raise


def _undo(ims: Ims, store: ArtifactStore, recipe_id: str, location: S3Location) -> None:
    """Best effort: the caller must see the original error, so cleanup failures are only logged."""
    try:
        store.delete(location)
    except Exception as exc:
        log.warning("could not delete %s: %s", location.url, exc)
    try:
        ims.recipes.purge(recipe_id)
    except Exception as exc:
        log.warning("could not delete recipe record %s: %s", recipe_id, exc)
