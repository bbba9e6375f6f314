"""`arzani`: operator commands. One Click group; each command gets its wiring lazily from the
environment (REDIS_URL, DATABASE_URL...), so `arzani --help` connects to nothing."""

from __future__ import annotations

import json
import sys

import click

from app.config import Settings
from app.errors import ArzaniError
from app.services import Services


class Context:
    """Made once per command line; connects only when a command asks for `services`."""

    def __init__(self):
        self._services: Services | None = None

    @property
    def services(self) -> Services:
        if self._services is None:
            try:
                self._services = Services(Settings.from_env(), process_kind="cli")
            except ArzaniError as exc:
                raise click.ClickException(exc.message) from None
        return self._services


pass_context = click.make_pass_decorator(Context, ensure=True)


@click.group()
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Arzani-X conversation service: operator commands."""
    ctx.obj = Context()


@cli.group()
def db() -> None:
    """The database schema."""


@db.command("init")
@pass_context
def db_init(ctx: Context) -> None:
    """Create the tables that do not exist yet (idempotent)."""
    ctx.services.db.create_all()
    click.echo(f"database ready: {ctx.services.db.engine.url.render_as_string(hide_password=True)}")


@cli.group()
def users() -> None:
    """API users and their bearer tokens."""


@users.command("create")
@click.argument("name")
@pass_context
def users_create(ctx: Context, name: str) -> None:
    """Create a user; its bearer token is printed alone on the last line (shown once)."""
    from app.auth import create_api_user

    ctx.services.db.create_all()
    user, token = create_api_user(ctx.services, name)
    click.echo(f"created user {user.id} ({user.name}); its bearer token:", err=False)
    click.echo(token)


def _dump(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def main() -> None:  # pragma: no cover - console entry point alternative
    sys.exit(cli())
