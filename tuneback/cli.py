"""``tuneback`` command line. Settings come from ``TUNEBACK_*`` environment variables.

The commands of each area live in their own module (``cli_retrain``, ``cli_serve``
...), each listing them in ``COMMANDS``; this module gathers them under one group.
Heavy packages (torch, the model) are imported inside the commands that need
them, so ``tuneback keys list`` stays fast.
"""

from __future__ import annotations

import sys

import click

from feedback.exceptions import TunebackError
from tuneback import cli_demo, cli_deploy, cli_erase, cli_lanes, cli_retrain, cli_serve
from tuneback.runtime import load_settings, prepare_store, store_session


@click.group()
@click.version_option(package_name="tuneback")
def cli() -> None:
    """Tuneback: turn users' ratings and agents' corrections into a better model."""


# --- db ------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply all migrations to TUNEBACK_DATABASE_URL (one migrator at a time)."""
    from sqlalchemy.exc import OperationalError

    from feedback import db as dbmod

    try:
        dbmod.upgrade(load_settings().resolved_database_url)
    except OperationalError as error:
        raise click.ClickException(f"cannot use the database: {error.orig}") from None
    click.echo(f"database at revision {dbmod.head_revision()}", err=True)


@db.command("wait")
@click.option(
    "--timeout", type=float, default=60, show_default=True, help="Seconds to keep trying."
)
def db_wait(timeout: float) -> None:
    """Wait until TUNEBACK_DATABASE_URL accepts connections (a prestart step).

    Retries once a second and says why it is still waiting; exits 1 with the
    last error if the database is still unreachable after TIMEOUT seconds.
    """
    import time

    from sqlalchemy import text

    from feedback import db as dbmod

    settings = load_settings()
    where = settings.resolved_database_url.split("@")[-1]
    engine = dbmod.make_engine(settings.resolved_database_url)
    deadline, last = time.monotonic() + timeout, None
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                click.echo(f"database {where} is up", err=True)
                return
            except Exception as error:  # noqa: BLE001 - any failure: not up yet
                message = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
                if message != last:
                    click.echo(f"waiting for the database {where}: {message}", err=True)
                last = message
            if time.monotonic() >= deadline:
                raise click.ClickException(
                    f"the database {where} is still unreachable after {timeout:g} s: {last}"
                )
            time.sleep(1)
    finally:
        engine.dispose()


# --- keys ----------------------------------------------------------------------


@cli.group()
def keys() -> None:
    """API keys: create, list, revoke."""


@keys.command("create")
@click.option("--role", required=True, type=click.Choice(["widget", "agent", "server", "admin"]))
@click.option("--origin", "origins", multiple=True, help="Allowed browser origin (repeatable).")
@click.option("--name", help="Who or what the key is for (shown as a correction's author).")
def keys_create(role: str, origins: tuple[str, ...], name: str | None) -> None:
    """Create a key and print it once, alone on its line of stdout."""
    from feedback import store

    with store_session(load_settings()) as session:
        try:
            key, plaintext = store.create_api_key(
                session, role=role, name=name, origins=list(origins)
            )
        except TunebackError as error:
            raise click.UsageError(str(error)) from None
    click.echo(f"created {role} key {key.id}; it is shown only once:", err=True)
    click.echo(plaintext)


@keys.command("list")
def keys_list() -> None:
    """List keys (never their secrets)."""
    from feedback import store

    with store_session(load_settings()) as session:
        rows = store.list_api_keys(session)
    click.echo(f"{'ID':<14}{'ROLE':<8}{'STATUS':<9}{'CREATED':<22}NAME / ORIGINS")
    for key in rows:
        status = "revoked" if key.revoked_at else "active"
        extra = " ".join(filter(None, [key.name, *key.allowed_origins]))
        click.echo(
            f"{key.id:<14}{key.role:<8}{status:<9}{key.created_at:%Y-%m-%d %H:%M:%S}   {extra}"
        )


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id (the part after tb_ in the key)."""
    from feedback import store

    with store_session(load_settings()) as session:
        try:
            store.revoke_api_key(session, key_id=key_id)
        except TunebackError as error:
            raise click.ClickException(str(error)) from None
    click.echo(f"revoked {key_id}", err=True)


# --- running -------------------------------------------------------------------


@cli.command("api")
@click.option("--host", help="Bind address (TUNEBACK_HOST, default 127.0.0.1).")
@click.option("--port", type=int, help="Port (TUNEBACK_PORT, default 8000).")
@click.option("--workers", type=int, help="Worker processes (TUNEBACK_WORKERS, default 2).")
def api(host: str | None, port: int | None, workers: int | None) -> None:
    """Run the feedback API alone, under gunicorn."""
    from tuneback.server import run_gunicorn

    settings = load_settings(host=host, port=port, workers=workers)
    prepare_store(settings)
    click.echo(
        f"Tuneback feedback API on http://{settings.host}:{settings.port} "
        f"(store: {settings.resolved_database_url.split('@')[-1]})",
        err=True,
    )
    run_gunicorn("tuneback.apps:api_app", settings)


for _module in (cli_lanes, cli_retrain, cli_serve, cli_deploy, cli_erase, cli_demo):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:  # pragma: no cover - console entry for python -m
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)
