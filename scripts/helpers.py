"""Plumbing of the `arzani` commands (scripts/cli.py): the lazily connecting context, the group
that turns the service's errors into one line, and parameter types."""

from __future__ import annotations

import json

import click

from app.config import Settings
from app.errors import ArzaniError
from app.wiring import Wiring


class Context:
    """Made once per command line; connects only when a command asks for `services`."""

    def __init__(self):
        self._services: Wiring | None = None

    @property
    def services(self) -> Wiring:
        if self._services is None:
            self._services = Wiring(Settings.from_env(), process_kind="cli")
        return self._services


pass_context = click.make_pass_decorator(Context, ensure=True)


class ArzaniGroup(click.Group):
    """Turns the service's own errors and an unreachable Redis or database into one clear line
    and exit status 1, instead of a traceback."""

    def invoke(self, ctx: click.Context):
        from redis.exceptions import ConnectionError as RedisConnectionError
        from sqlalchemy.exc import OperationalError

        try:
            return super().invoke(ctx)
        except ArzaniError as exc:
            raise click.ClickException(exc.message) from None
        except RedisConnectionError as exc:
            raise click.ClickException(f"Redis is unavailable: {exc}") from None
        except OperationalError as exc:
            raise click.ClickException(f"the database is unavailable: {exc.orig}") from None


class Duration(click.ParamType):
    """`90`, `90s`, `15m`, `2h`, `7d` -> timedelta."""

    name = "duration"
    _UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

    def convert(self, value, param, ctx):
        from datetime import timedelta

        if isinstance(value, timedelta):
            return value
        text = str(value).strip().lower()
        unit = text[-1] if text and text[-1] in self._UNITS else "s"
        number = text[:-1] if text and text[-1] in self._UNITS else text
        if not number.isdigit():
            self.fail(f"{value!r} is not a duration like 90s, 15m, 2h or 7d", param, ctx)
        return timedelta(seconds=int(number) * self._UNITS[unit])


def dump_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
