"""`ims recipes`: Kiwi-NG recipe records, and `upload` to pack, upload and register one in a step."""

from __future__ import annotations

from pathlib import Path

import typer

from ims.cli.choices import ARCH_HELP, DISTRO_HELP, RECIPE_TYPE_HELP, Arch, Distro, RecipeType, value
from ims.cli.crud import RecordCommands, add_crud, link_option
from ims.cli.session import Session, api_command, as_bool, note, parse_pairs

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

_DKMS_HELP = "Build DKMS modules in jobs of this recipe (cray form: --require-dkms true|false)."
_TEMPLATE_HELP = "Template variable for the recipe, KEY=VALUE; repeat for more."


def template_option(pairs: list[str] | None, keys: str | None, values: str | None) -> dict[str, str] | None:
    """`--template K=V ...` and cray's `--template-dictionary-key K1,K2 --template-dictionary-value V1,V2`."""
    template = parse_pairs(pairs, "--template")
    if keys is not None or values is not None:
        key_list = (keys or "").split(",")
        value_list = (values or "").split(",")
        if len(key_list) != len(value_list):
            raise typer.BadParameter("as many values as keys are needed", param_hint="--template-dictionary-key/-value")
        template.update(zip(key_list, value_list, strict=True))
    return template if (pairs or keys is not None) else None


@api_command(app, "create")
def create_recipe(
    session: Session,
    name: str = typer.Option(..., "--name", help="Recipe name."),
    linux_distribution: Distro = typer.Option(..., "--linux-distribution", help=DISTRO_HELP),
    recipe_type: RecipeType = typer.Option(RecipeType.kiwi_ng, "--recipe-type", help=RECIPE_TYPE_HELP),
    arch: Arch | None = typer.Option(None, "--arch", help=ARCH_HELP + " Server default x86_64."),
    require_dkms: bool | None = typer.Option(None, "--require-dkms/--no-require-dkms", metavar="", help=_DKMS_HELP),
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
        linux_distribution=linux_distribution.value,
        recipe_type=recipe_type.value,
        arch=value(arch),
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
    arch: Arch | None = typer.Option(None, "--arch", help=ARCH_HELP),
    require_dkms: bool | None = typer.Option(None, "--require-dkms/--no-require-dkms", metavar="", help=_DKMS_HELP),
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
        arch=value(arch),
        require_dkms=as_bool(require_dkms),
        template_dictionary=template_option(template, template_keys, template_values),
    )
    session.show(record)


def _check_source(source: Path) -> None:
    """What is wrong with SOURCE is a usage error (exit 2), found before anything is created or uploaded."""
    if not source.exists():
        raise typer.BadParameter(f"{source} does not exist", param_hint="SOURCE")
    if source.is_dir():
        if not (source / "config.xml").is_file() and not any(source.glob("*.kiwi")):
            raise typer.BadParameter(
                f"{source} is not a kiwi-ng recipe: it has no config.xml (or *.kiwi description)", param_hint="SOURCE"
            )
    elif not source.name.endswith((".tar.gz", ".tgz")):
        raise typer.BadParameter(
            f"{source} is neither a recipe directory nor a .tar.gz/.tgz archive", param_hint="SOURCE"
        )


@api_command(app, "upload")
def upload_recipe(
    session: Session,
    name: str = typer.Argument(..., help="Recipe name."),
    source: Path = typer.Argument(..., help="Recipe directory (packed for you) or a .tar.gz / .tgz archive."),
    distro: Distro = typer.Option(..., "--distro", "--linux-distribution", help=DISTRO_HELP),
    recipe_type: RecipeType = typer.Option(RecipeType.kiwi_ng, "--type", "--recipe-type", help=RECIPE_TYPE_HELP),
    arch: Arch | None = typer.Option(None, "--arch", help=ARCH_HELP + " Server default x86_64."),
    require_dkms: bool | None = typer.Option(None, "--require-dkms/--no-require-dkms", metavar="", help=_DKMS_HELP),
    template: list[str] | None = typer.Option(None, "--template", help=_TEMPLATE_HELP),
) -> None:
    """Pack (if a directory), upload to S3 and register a recipe in one step.

    Creates the record, uploads s3://ims/recipes/<id>/recipe.tar.gz with its md5, then links it. Running it again with the same content and template finds the existing recipe instead of making another.

    Needs S3 settings: S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY, or \\[s3] in the config file.

    Example: ims recipes upload sles15-base ./recipes/sles15 --distro sles15 --template CSM_RELEASE=1.6
    """
    from ims.client.recipes import upload_recipe as upload

    _check_source(source)
    with session.store() as store:
        result = upload(
            session.ims,
            store,
            name=name,
            source=source,
            linux_distribution=distro.value,
            recipe_type=recipe_type.value,
            arch=value(arch),
            require_dkms=as_bool(require_dkms),
            template_dictionary=parse_pairs(template, "--template"),
            bucket=session.config.s3.ims_bucket,
        )
    note(f"recipe {result.recipe['id']}: {result.action}")
    session.show(result.recipe)
