"""`arzani`: operator commands. One Click group; each command gets its wiring lazily from the
environment (REDIS_URL, DATABASE_URL...), so `arzani --help` connects to nothing. The plumbing
(context, error translation, parameter types) is in scripts/helpers.py, as RQ's cli/helpers.py."""

from __future__ import annotations

import json
import sys

import click

from scripts.helpers import ArzaniGroup, Context, Duration, dump_json, pass_context


@click.group(cls=ArzaniGroup)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Arzani-X conversation service: operator commands."""
    ctx.obj = Context()


@cli.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@click.argument("revision", default="head")
@pass_context
def db_upgrade(ctx: Context, revision: str) -> None:
    """Migrate the schema to REVISION (default: the newest). Idempotent; the Procfile's release."""
    from app.migrate import upgrade

    at = upgrade(ctx.services.db, revision)
    click.echo(f"database at revision {at}: {ctx.services.db.engine.url.render_as_string(hide_password=True)}")


@db.command("init")
@click.pass_context
def db_init(click_ctx: click.Context) -> None:
    """Same as `db upgrade` (kept for scripts written before migrations)."""
    click_ctx.invoke(db_upgrade)


@cli.group()
def users() -> None:
    """API users and their bearer tokens."""


@users.command("create")
@click.argument("name")
@click.option("--allow-duplicate", is_flag=True, help="create it even if a live user has this name")
@pass_context
def users_create(ctx: Context, name: str, allow_duplicate: bool) -> None:
    """Create a user; its bearer token is printed alone on the last line (shown once)."""
    from app.auth import create_api_user, live_users_named
    from app.migrate import upgrade

    upgrade(ctx.services.db)
    same = live_users_named(ctx.services, name)
    if same and not allow_duplicate:
        raise click.ClickException(f"a live user is already named {name!r} (id {', '.join(str(u.id) for u in same)}); "
                                   "pick another name, or pass --allow-duplicate")
    user, token = create_api_user(ctx.services, name)
    click.echo(f"created user {user.id} ({user.name}); its bearer token:", err=False)
    click.echo(token)


@users.command("list")
@click.option("--all", "include_all", is_flag=True, help="browser (cookie) users and revoked users too")
@pass_context
def users_list(ctx: Context, include_all: bool) -> None:
    """API users: id, name, kind, created, revoked. Tokens are never shown (only their hash is kept)."""
    from app.auth import list_users

    click.echo(f"{'ID':>6} {'NAME':<24} {'KIND':<4} {'CREATED':<20} REVOKED")
    for user in list_users(ctx.services, include_all=include_all):
        revoked = user.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if user.revoked_at else "-"
        click.echo(f"{user.id:>6} {user.name:<24} {user.kind:<4} {user.created_at:%Y-%m-%d %H:%M:%S} {revoked}")


@cli.group()
def sessions() -> None:
    """Chat sessions: what Redis tracks and what the database holds."""


@sessions.command("list")
@click.option("--limit", default=50, show_default=True, help="at most this many sessions")
@click.option("--inconsistent", is_flag=True, help="only sessions whose Redis key and database disagree")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@pass_context
def sessions_list(ctx: Context, limit: int, inconsistent: bool, as_json: bool) -> None:
    """Sessions tracked in Redis, then live conversations whose session has no key, newest first."""
    from app.operations import known_session_ids

    shown = 0
    if not as_json:
        click.echo(f"{'SESSION':<36} {'CONVERSATION':<36} {'TRACKED':<8} {'TTL_S':>8} {'PENDING':>7} STATE")
    for session_id in known_session_ids(ctx.services):
        status = ctx.services.sessions.status(session_id)
        if inconsistent and status["consistent"]:
            continue
        if as_json:
            click.echo(json.dumps(status))
        else:
            tracked = status["tracked"]
            ttl = tracked["ttl_ms"] // 1000 if tracked["ttl_ms"] is not None else "-"
            state = "ok" if status["consistent"] else "MISMATCH"
            click.echo(f"{session_id:<36} {status['conversation_id'] or '-':<36} "
                       f"{'yes' if tracked['conversation_id'] else 'no':<8} {ttl:>8} "
                       f"{status['pending_replies']:>7} {state}")
        shown += 1
        if shown >= limit:
            break


@sessions.command("show")
@click.argument("session_id")
@pass_context
def sessions_show(ctx: Context, session_id: str) -> None:
    """What GET /api/sessions/SID shows, for any user, plus the fence counter."""
    from app import keys

    if not keys.is_valid_session_id(session_id):
        raise click.BadParameter("session ids match ^[A-Za-z0-9_-]{8,128}$", param_hint="SESSION_ID")
    if not ctx.services.sessions.known(session_id):
        raise click.ClickException(f"no such session: {session_id} (neither Redis nor the database knows it)")
    dump_json(ctx.services.sessions.status(session_id))  # the operator's view: with the fence


@cli.command("sweep")
@click.option("--older-than", "older_than_s", default=60, show_default=True,
              help="seconds a user message may stay pending before it is enqueued again")
@pass_context
def sweep(ctx: Context, older_than_s: int) -> None:
    """Enqueue again the reply jobs of user messages stranded in `pending`."""
    from workers.maintenance import sweep_pending

    requeued = sweep_pending(ctx.services, older_than_s)
    click.echo(f"requeued {len(requeued)} reply job(s)" +
               (f" for message(s) {', '.join(map(str, requeued))}" if requeued else ""))


@cli.command("cron")
@pass_context
def cron_scheduler(ctx: Context) -> None:
    """Run the maintenance schedule (workers/cron.py) with RQ's cron scheduler, surviving Redis
    outages (the Procfile's `cron:`; run exactly one)."""
    from app.logs import configure_logging
    from workers import scheduler

    configure_logging(ctx.services.settings.log_level)
    scheduler.run(ctx.services.rq_redis, services=ctx.services)


@cli.command("reconcile")
@click.option("--fix", is_flag=True, help="repair what it finds (the database wins)")
@pass_context
def reconcile(ctx: Context, fix: bool) -> None:
    """Find sessions whose Redis key and database disagree, and sessions with several live
    conversations; with --fix, rebuild Redis from the database and merge duplicates into the
    oldest. Exit status 1 if something was found and not fixed."""
    from app.operations import reconcile as run_reconcile

    findings = run_reconcile(ctx.services, fix=fix)
    for finding in findings:
        click.echo(finding.line())
    unfixed = [f for f in findings if not f.fixed]
    click.echo(f"{len(findings)} finding(s), {len(findings) - len(unfixed)} fixed")
    if unfixed:
        sys.exit(1)


@cli.command("cleanup")
@click.option("--older-than", type=Duration(), default="1d", show_default=True,
              help="only conversations created before this long ago")
@click.option("--dry-run", is_flag=True, help="print what would be removed, remove nothing")
@pass_context
def cleanup(ctx: Context, older_than, dry_run: bool) -> None:
    """Remove orphaned conversations (no user message) and Redis leftovers without a TTL."""
    from app.operations import cleanup as run_cleanup

    removed = run_cleanup(ctx.services, older_than=older_than, dry_run=dry_run)
    for line in removed:
        click.echo(("would remove " if dry_run else "removed ") + line)
    click.echo(f"{len(removed)} item(s) {'to remove' if dry_run else 'removed'}")


@users.command("revoke")
@click.argument("name_or_id")
@pass_context
def users_revoke(ctx: Context, name_or_id: str) -> None:
    """Revoke a user's bearer token (by user id, or by name if the name is unique)."""
    from app.auth import revoke_user

    user = revoke_user(ctx.services, name_or_id)
    click.echo(f"revoked user {user.id} ({user.name})")


# Commands that live in their own modules (imported last: they use nothing above).
from scripts.bench import bench  # noqa: E402
from scripts.chaos import chaos  # noqa: E402
from scripts.devstack import run, stack_env  # noqa: E402
from scripts.race import race  # noqa: E402

cli.add_command(run)
cli.add_command(stack_env)
cli.add_command(race)
cli.add_command(bench)
cli.add_command(chaos)


if __name__ == "__main__":  # `python -m scripts.cli` (what `make run` uses: this checkout's code)
    cli()
