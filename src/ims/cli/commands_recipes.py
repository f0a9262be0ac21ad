"""`ims recipes`: Kiwi-NG recipe records, and `upload` to pack, upload and register one in a step."""

from __future__ import annotations

from pathlib import Path

import typer

from ims.cli.crud import RecordCommands, add_crud, link_option
from ims.cli.session import BoolWord, Session, api_command, as_bool, note, parse_pairs

app = typer.Typer(help="Image recipes (cray ims recipes), plus `upload`.", no_args_is_help=True)
COLUMNS = ("id", "name", "recipe_type", "linux_distribution", "arch", "link.path", "created")

add_crud(
    RecordCommands(
        app,
        "recipes",
        "recipe",
        lambda ims: ims.recipes,
        COLUMNS,
        delete_note="Recoverable: see `ims deleted recipes`.",
    )
)

_TEMPLATE_HELP = "Template variable for the recipe, KEY=VALUE; repeat for more."


def template_option(
    pairs: list[str] | None, keys: str | None, values: str | None
) -> dict[str, str] | None:
    """`--template K=V ...` and cray's `--template-dictionary-key K1,K2 --template-dictionary-value V1,V2`."""
    template = parse_pairs(pairs, "--template")
    if keys is not None or values is not None:
        key_list = (keys or "").split(",")
        value_list = (values or "").split(",")
        if len(key_list) != len(value_list):
            raise typer.BadParameter(
                "as many values as keys are needed", param_hint="--template-dictionary-key/-value"
            )
        template.update(zip(key_list, value_list, strict=True))
    return template if (pairs or keys is not None) else None


@api_command(app, "create")
def create_recipe(
    session: Session,
    name: str = typer.Option(..., "--name", help="Recipe name."),
    linux_distribution: str = typer.Option(..., "--linux-distribution", help="sles12, sles15, centos7 or debian12."),
    recipe_type: str = typer.Option("kiwi-ng", "--recipe-type", help="kiwi-ng or packer."),
    arch: str | None = typer.Option(None, "--arch", help="x86_64 (server default) or aarch64."),
    require_dkms: BoolWord | None = typer.Option(None, "--require-dkms", case_sensitive=False),
    template: list[str] | None = typer.Option(None, "--template", help=_TEMPLATE_HELP),
    template_keys: str | None = typer.Option(None, "--template-dictionary-key", help="cray style: K1,K2."),
    template_values: str | None = typer.Option(None, "--template-dictionary-value", help="cray style: V1,V2."),
    link_path: str | None = typer.Option(None, "--link-path", help="s3://ims/recipes/<id>/recipe.tar.gz"),
    link_etag: str | None = typer.Option(None, "--link-etag"),
    link_type: str | None = typer.Option(None, "--link-type", help="s3"),
) -> None:
    """Create a recipe record (the archive is linked later; `ims recipes upload` does both).

    Example: ims recipes create --name sles15-base --linux-distribution sles15 --template CSM_RELEASE=1.6
    """
    record = session.ims.recipes.create(
        name,
        linux_distribution=linux_distribution,
        recipe_type=recipe_type,
        arch=arch,
        require_dkms=as_bool(require_dkms),
        template_dictionary=template_option(template, template_keys, template_values),
        link=link_option(link_path, link_etag, link_type),
    )
    session.show(record)


@api_command(app, "update")
def update_recipe(
    session: Session,
    recipe_id: str = typer.Argument(..., metavar="ID"),
    name: str | None = typer.Option(None, "--name", help="A new name for the recipe."),
    link_path: str | None = typer.Option(None, "--link-path", help="s3://ims/recipes/<id>/recipe.tar.gz"),
    link_etag: str | None = typer.Option(None, "--link-etag"),
    link_type: str | None = typer.Option(None, "--link-type", help="s3"),
    arch: str | None = typer.Option(None, "--arch", help="x86_64 or aarch64."),
    require_dkms: BoolWord | None = typer.Option(None, "--require-dkms", case_sensitive=False),
    template: list[str] | None = typer.Option(None, "--template", help=_TEMPLATE_HELP + " Replaces the list."),
    template_keys: str | None = typer.Option(None, "--template-dictionary-key", help="cray style: K1,K2."),
    template_values: str | None = typer.Option(None, "--template-dictionary-value", help="cray style: V1,V2."),
) -> None:
    """Change a recipe: rename it, link its archive, or set arch, require-dkms or the template dictionary.

    Example: ims recipes update 6d1cbd6a-3ea4-4b2a-9c3e-1f1e7c0fbd2f --link-path s3://ims/recipes/6d1cbd6a-3ea4-4b2a-9c3e-1f1e7c0fbd2f/recipe.tar.gz
    """
    record = session.ims.recipes.update(
        recipe_id,
        name=name,
        link=link_option(link_path, link_etag, link_type),
        arch=arch,
        require_dkms=as_bool(require_dkms),
        template_dictionary=template_option(template, template_keys, template_values),
    )
    session.show(record)


@api_command(app, "upload")
def upload_recipe(
    session: Session,
    name: str = typer.Argument(..., help="Recipe name."),
    source: Path = typer.Argument(..., help="Recipe directory (packed for you) or a .tar.gz / .tgz archive."),
    distro: str = typer.Option(..., "--distro", "--linux-distribution", help="sles12, sles15, centos7 or debian12."),
    recipe_type: str = typer.Option("kiwi-ng", "--type", "--recipe-type", help="kiwi-ng or packer."),
    arch: str | None = typer.Option(None, "--arch", help="x86_64 (server default) or aarch64."),
    require_dkms: BoolWord | None = typer.Option(None, "--require-dkms", case_sensitive=False),
    template: list[str] | None = typer.Option(None, "--template", help=_TEMPLATE_HELP),
) -> None:
    """Pack (if a directory), upload to S3 and register a recipe in one step.

    Creates the record, uploads s3://ims/recipes/<id>/recipe.tar.gz with its md5, then links it. Running it again with the same content and template finds the existing recipe instead of making another.

    Needs S3 settings: S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY, or \\[s3] in the config file.

    Example: ims recipes upload sles15-base ./recipes/sles15 --distro sles15 --template CSM_RELEASE=1.6
    """
    from ims.client.recipes import upload_recipe as upload

    with session.store() as store:
        result = upload(
            session.ims,
            store,
            name=name,
            source=source,
            linux_distribution=distro,
            recipe_type=recipe_type,
            arch=arch,
            require_dkms=as_bool(require_dkms),
            template_dictionary=parse_pairs(template, "--template"),
            bucket=session.config.s3.ims_bucket,
        )
    note(f"recipe {result.recipe['id']}: {result.action}")
    session.show(result.recipe)
