"""`ims remote-build-nodes`: machines that run jobs over SSH, and their live status."""

from __future__ import annotations

import typer

from ims.cli.crud import RecordCommands, add_crud
from ims.cli.session import Session, api_command
from ims.client.config import ConfigError
from ims.domain.validation import check_xname

app = typer.Typer(help="Remote build nodes (cray ims remote-build-nodes).", no_args_is_help=True)
status_app = typer.Typer(help="Live status of the nodes (checked over SSH on every call).", no_args_is_help=True)
app.add_typer(status_app, name="status")

STATUS_COLUMNS = ("xname", "ableToRunJobs", "nodeArch", "numCurrentJobs", "sshStatus", "podmanStatus")

add_crud(
    RecordCommands(
        app,
        "remote-build-nodes",
        "remote build node",
        lambda ims: ims.remote_build_nodes,
        ("xname",),
        key="XNAME",
        example="x3000c0s19b4n0",
    )
)


@api_command(app, "create")
def create_node(session: Session, xname: str = typer.Option(..., "--xname", help="The node's xname.")) -> None:
    """Register a node (registering it again is harmless).

    Example: ims remote-build-nodes create --xname x3000c0s19b4n0
    """
    problem = check_xname(xname)  # the server's rule, checked before sending (ims.domain.validation)
    if problem is not None:
        raise ConfigError(problem)
    session.show(session.ims.remote_build_nodes.create(xname))


@api_command(status_app, "list")
def list_status(session: Session) -> None:
    """Check every node: SSH, podman, arch, running jobs.

    Example: ims remote-build-nodes status list
    """
    session.show(session.ims.remote_build_nodes.status_all(), STATUS_COLUMNS)


@api_command(status_app, "describe")
def describe_status(session: Session, xname: str = typer.Argument(..., metavar="XNAME")) -> None:
    """Check one node.

    Example: ims remote-build-nodes status describe x3000c0s19b4n0
    """
    session.show(session.ims.remote_build_nodes.status(xname))


@api_command(app, "public-key", output=False)
def public_key(session: Session) -> None:
    """Print IMS's SSH public key: put the line in /root/.ssh/authorized_keys on every build node.

    Example: ims remote-build-nodes public-key
    """
    typer.echo(session.ims.remote_build_nodes.public_key())
