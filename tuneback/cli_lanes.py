"""``tuneback lanes``: the use cases this deployment learns and serves, one adapter each.

A lane is created once by an operator (these commands need the store, so they
are an admin's); chat systems then name it as ``model`` in chat requests and as
``lane`` when they log completions. ``default`` always exists.
"""

from __future__ import annotations

import json
from typing import Any

import click

from feedback.exceptions import TunebackError
from tuneback.runtime import load_settings, store_session


def _override_options(function):  # noqa: ANN001, ANN202
    """The settings a lane may override (feedback.lanes.OVERRIDES), as options."""
    options = [
        click.option("--primary-metric", help="The gate's primary metric for this lane."),
        click.option(
            "--gate-margin",
            type=float,
            help="Least improvement of the primary metric (TUNEBACK_GATE_MARGIN otherwise).",
        ),
        click.option(
            "--golden-set",
            help="JSONL golden file the gate scores for this lane (TUNEBACK_GOLDEN_SET otherwise).",
        ),
        click.option(
            "--response-schema",
            help="JSON schema the lane's answers follow: a file or JSON text. The gate decodes "
            "held-out answers under it; the server applies it to requests of this lane that "
            "send no response_format.",
        ),
        click.option(
            "--unset",
            "unset",
            multiple=True,
            type=click.Choice(["primary-metric", "gate-margin", "golden-set", "response-schema"]),
            help="Remove an override (repeatable): the deployment's setting applies again.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _overrides(unset: tuple[str, ...], **given: Any) -> dict[str, Any]:
    values = {name: value for name, value in given.items() if value is not None}
    for name in unset:
        values[name.replace("-", "_")] = None
    return values


def _describe(lane, serving: str | None) -> dict[str, Any]:  # noqa: ANN001
    return {
        "name": lane.name,
        "description": lane.description,
        "serving": serving,
        "settings": lane.settings or {},
        "created_at": lane.created_at.isoformat(),
    }


@click.group("lanes")
def lanes() -> None:
    """Lanes: named use cases, each with its own data, adapter and gate."""


@lanes.command("create")
@click.argument("name")
@click.option("--description", help="What the lane is for (shown in lists and /v1/models).")
@_override_options
def lanes_create(name: str, description: str | None, unset: tuple[str, ...], **given: Any) -> None:
    """Create lane NAME (lower-case letters, digits, - and _; at most 63 characters).

    Chat requests then use ``model=NAME``; logged completions ``"lane": "NAME"``.
    """
    from feedback import lanes as lane_store

    if unset:
        raise click.UsageError("--unset is for `tuneback lanes set`")
    with store_session(load_settings()) as session:
        try:
            lane = lane_store.create_lane(
                session, name=name, description=description, settings=_overrides((), **given)
            )
        except TunebackError as error:
            raise click.ClickException(str(error)) from None
    click.echo(f"created lane {lane.name}; ask for it with model={lane.name!r}", err=True)


@lanes.command("set")
@click.argument("name")
@click.option("--description", help="A new description.")
@_override_options
def lanes_set(name: str, description: str | None, unset: tuple[str, ...], **given: Any) -> None:
    """Change lane NAME's description or setting overrides."""
    from feedback import lanes as lane_store

    overrides = _overrides(unset, **given)
    if description is None and not overrides:
        raise click.UsageError("nothing to change: give --description or a setting to override")
    with store_session(load_settings()) as session:
        try:
            lane = lane_store.set_lane(
                session, name=name, description=description, settings=overrides
            )
        except TunebackError as error:
            raise click.ClickException(str(error)) from None
        shown = json.dumps(lane.settings or {})
    click.echo(f"lane {name}: settings {shown}", err=True)


@lanes.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per lane.")
def lanes_list(as_json: bool) -> None:
    """List the lanes with the adapter version each serves (base: the base model)."""
    from feedback import lanes as lane_store
    from feedback.adapters import store as adapter_store

    with store_session(load_settings()) as session:
        rows = lane_store.list_lanes(session)
        promoted = adapter_store.promoted_by_lane(session)
    serving = {lane.name: getattr(promoted.get(lane.name), "version", None) for lane in rows}
    if as_json:
        for lane in rows:
            click.echo(json.dumps(_describe(lane, serving[lane.name])))
        return
    width = max([len("LANE"), *(len(lane.name) for lane in rows)]) + 2
    click.echo(f"{'LANE':<{width}}{'SERVING':<10}{'OVERRIDES':<28}DESCRIPTION")
    for lane in rows:
        overrides = ",".join(sorted(lane.settings or {})) or "-"
        click.echo(
            f"{lane.name:<{width}}{serving[lane.name] or 'base':<10}{overrides:<28}"
            f"{lane.description or ''}"
        )


COMMANDS = (lanes,)
