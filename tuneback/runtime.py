"""What every command and app factory starts from: settings, the store, the base model.

Settings come from ``TUNEBACK_*`` environment variables (overrides from command
options win). Heavy packages are imported inside the functions that need them,
so ``tuneback keys list`` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from feedback.exceptions import TunebackError
from feedback.settings import Settings


def load_settings(**overrides) -> Settings:
    """Settings from the environment; ``None`` overrides are left out."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        raise click.UsageError(f"invalid setting: {error}") from None


@contextmanager
def store_session(settings: Settings, *, migrate: bool = False) -> Iterator[Session]:
    """A committed-on-success session on the configured store.

    The embedded SQLite store (or any store, with ``migrate``) is migrated first;
    any other must already be at the latest migration.
    """
    from sqlalchemy.exc import OperationalError

    from feedback import db

    engine = db.make_engine(settings.resolved_database_url)
    try:
        if migrate or settings.is_sqlite:
            db.upgrade(settings.resolved_database_url)
        db.check_schema(engine)
        with Session(engine, expire_on_commit=False) as session:
            yield session
            session.commit()
    except TunebackError as error:
        raise click.ClickException(str(error)) from None
    except OperationalError as error:
        raise click.ClickException(f"cannot use the database: {error.orig}") from None
    finally:
        engine.dispose()


def prepare_store(settings: Settings) -> None:
    """Migrate the embedded store, or fail early (a clear error) on an old schema."""
    with store_session(settings):
        pass


@contextmanager
def open_engine(settings: Settings) -> Iterator[Engine]:
    """An engine on the prepared store; a Tuneback error inside becomes a clean exit."""
    from feedback import db

    prepare_store(settings)
    engine = db.make_engine(settings.resolved_database_url)
    try:
        yield engine
    except TunebackError as error:
        raise click.ClickException(str(error)) from None
    finally:
        engine.dispose()


def with_base_model(settings: Settings) -> Settings:
    """``settings`` with the base model resolved to a Hugging Face folder (the default
    GGUF file converted once); unchanged in capture-proxy mode, which needs no model."""
    if settings.upstream_url:
        return settings
    from retrain.base_model import resolve_base_model

    folder = resolve_base_model(settings.base_model, settings.data_dir)
    return settings.model_copy(update={"base_model": str(folder)})
