"""`ims images`: image records, plus `import` (register an image built elsewhere) and `download`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from ims.cli.choices import ARCH_HELP, Arch, value
from ims.cli.crud import RecordCommands, add_crud, link_option
from ims.cli.session import Session, api_command, note, parse_pairs, warn

app = typer.Typer(help="Boot images (cray ims images), plus `import` and `download`.", no_args_is_help=True)
COLUMNS = ("id", "name", "arch", "link.path", "created")

add_crud(
    RecordCommands(
        app,
        "images",
        "image",
        lambda ims: ims.images,
        COLUMNS,
        delete_note="Recoverable: see `ims deleted images`.",
    )
)


class MetadataOperation(StrEnum):
    set = "set"
    remove = "remove"


@api_command(app, "create")
def create_image(
    session: Session,
    name: str = typer.Option(..., "--name", help="Image name."),
    arch: Arch | None = typer.Option(None, "--arch", help=ARCH_HELP + " Server default x86_64."),
    metadata: list[str] | None = typer.Option(None, "--metadata", help="Label KEY=VALUE; repeat for more."),
    link_path: str | None = typer.Option(None, "--link-path", help="s3://boot-images/<id>/manifest.json"),
    link_etag: str | None = typer.Option(None, "--link-etag"),
    link_type: str | None = typer.Option(None, "--link-type", help="s3"),
) -> None:
    """Create an image record (its manifest is linked later; `ims images import` does it all).

    Example: ims images create --name compute-sles15 --arch x86_64 --metadata owner=ops
    """
    record = session.ims.images.create(
        name,
        arch=value(arch),
        metadata=parse_pairs(metadata, "--metadata") if metadata else None,
        link=link_option(link_path, link_etag, link_type),
    )
    session.show(record)


@api_command(app, "update")
def update_image(
    session: Session,
    image_id: str = typer.Argument(..., metavar="ID"),
    name: str | None = typer.Option(None, "--name", help="A new name for the image."),
    link_path: str | None = typer.Option(None, "--link-path", help="s3://boot-images/<id>/manifest.json"),
    link_etag: str | None = typer.Option(None, "--link-etag"),
    link_type: str | None = typer.Option(None, "--link-type", help="s3"),
    arch: Arch | None = typer.Option(None, "--arch", help=ARCH_HELP),
    metadata_operation: MetadataOperation | None = typer.Option(None, "--metadata-operation"),
    metadata_key: str | None = typer.Option(None, "--metadata-key"),
    metadata_value: str | None = typer.Option(None, "--metadata-value"),
) -> None:
    """Change an image: rename it, link its manifest, fix its arch, or set/remove one label.

    Example: ims images update 6d1cbd6a-3ea4-4b2a-9c3e-1f1e7c0fbd2f --metadata-operation set --metadata-key sbps-project --metadata-value true
    """
    if metadata_operation is None and (metadata_key is not None or metadata_value is not None):
        raise typer.BadParameter("needs --metadata-operation set|remove", param_hint="--metadata-key")
    if metadata_operation is not None and metadata_key is None:
        raise typer.BadParameter("needs --metadata-key", param_hint="--metadata-operation")
    record = session.ims.images.update(
        image_id,
        name=name,
        link=link_option(link_path, link_etag, link_type),
        arch=value(arch),
        metadata_operation=metadata_operation.value if metadata_operation else None,
        metadata_key=metadata_key,
        metadata_value=metadata_value,
    )
    session.show(record)


def _file(help_text: str) -> Path:
    return typer.Option(..., exists=True, dir_okay=False, readable=True, help=help_text)


@api_command(app, "import")
def import_image(
    session: Session,
    name: str = typer.Argument(..., help="Image name."),
    rootfs: Path = _file("Root file system (squashfs)."),
    kernel: Path = _file("Kernel."),
    initrd: Path = _file("Initrd."),
    params: Path | None = typer.Option(
        None, "--params", exists=True, dir_okay=False, readable=True, help="Kernel parameters file."
    ),
    debug_kernel: Path | None = typer.Option(
        None, "--debug-kernel", exists=True, dir_okay=False, readable=True, help="Debug kernel."
    ),
    arch: Arch = typer.Option(Arch.x86_64, "--arch", help=ARCH_HELP),
    job_id: str | None = typer.Option(None, "--job-id", help="Also set this job's resultant_image_id."),
) -> None:
    """Register an image built elsewhere: upload its artifacts, write manifest.json, link it.

    The one-step form of the "import an external image" procedure: creates the image record, uploads rootfs, kernel, initrd (and parameters) to s3://boot-images/<id>/ with md5 metadata, writes the v1.0 manifest and links it. On failure the record and uploaded objects are removed.

    Needs S3 settings: S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY, or \\[s3] in the config file.

    Example: ims images import compute-sles15 --rootfs rootfs.squashfs --kernel vmlinuz --initrd initrd.img --params kernel-parameters
    """
    from ims.client.artifacts import upload_image_artifacts

    _warn_unless_customizable(rootfs)
    with session.store() as store:
        result = upload_image_artifacts(
            session.ims.client,
            store,
            name=name,
            arch=arch.value,
            job_id=job_id,
            rootfs=rootfs,
            kernel=kernel,
            initrd=initrd,
            kernel_parameters=params,
            debug_kernel=debug_kernel,
            bucket=session.config.s3.boot_images_bucket,
            progress=store.progress.note,
        )
    session.show(result.image)


def _warn_unless_customizable(rootfs: Path) -> None:
    """A warning (the import goes on) when a customize job of this image would stop before SSH."""
    from ims.cli.rootfs_check import ListingError, missing_boot_files

    try:
        missing = missing_boot_files(rootfs)
    except ListingError as exc:
        warn(f"cannot look into the rootfs {rootfs}: {exc}")
        return
    if missing:
        warn(
            f"the rootfs has no {' and no '.join(missing)}: the image imports, but a customize job of it "
            "stops before SSH, because packaging takes the kernel and initrd from the image's /boot "
            "(or give the job --kernel-file-name/--initrd-file-name naming files that are there)"
        )


@api_command(app, "download")
def download_image(
    session: Session,
    image_id: str = typer.Argument(..., metavar="ID"),
    dest: Path = typer.Argument(..., help="Directory to write manifest.json and the artifacts into."),
) -> None:
    """Fetch every artifact of an image's manifest into a directory and verify their md5 sums.

    Files are named after their S3 objects (rootfs, kernel, initrd, ...); manifest.json is kept too. A checksum mismatch fails the command (exit 1) and leaves no partial file behind. Needs S3 settings like `import`.

    Example: ims images download 6d1cbd6a-3ea4-4b2a-9c3e-1f1e7c0fbd2f ./compute-sles15
    """
    from ims.client.transfer import download_image as download

    with session.store() as store:
        files = download(session.ims, store, image_id, dest)
    note(f"downloaded {len(files)} artifacts of image {image_id} into {dest}")
    rows = [
        {"file": str(item.path), "type": item.type, "size": item.size, "md5": item.md5, "verified": item.verified}
        for item in files
    ]
    session.show(rows, ("file", "type", "size", "md5", "verified"))
