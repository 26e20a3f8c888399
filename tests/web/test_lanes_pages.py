"""The review console and the dashboard per lane, through Flask's test client on SQLite
and PostgreSQL: lane filters, each row's lane, one lane's dashboard, promote and roll
back acting on the selected lane's registry only, and bad lanes answered with a page."""

from __future__ import annotations

import re

import pytest
from sqlalchemy.orm import Session

from feedback import store
from feedback.adapters import store as adapter_store
from feedback.adapters.registry import Registry
from feedback.app import create_app
from feedback.lanes import create_lane
from feedback.web import queries
from tests.web.support import BASE_MODEL, csrf_of, make_adapter_files
from tests.web.test_queries import vote

PASS = {"passed": True, "reasons": ["better"], "thresholds": {"primary": "heldout_overlap"}}


@pytest.fixture
def app(settings, engine):
    """The app serving BASE_MODEL (the registry refuses adapters for another)."""
    settings = settings.model_copy(update={"base_model": BASE_MODEL})
    with Session(engine) as session:
        create_lane(session, name="support", description="the support assistant")
        create_lane(session, name="router")
        session.commit()
    return create_app(settings, engine=engine)


def sign_in(client, keys, role: str) -> str:
    """Sign in through the form; the CSRF token of the session."""
    form = client.get("/signin")
    answer = client.post("/signin", data={"key": keys[role], "csrf_token": csrf_of(form.text)})
    assert answer.status_code == 303
    return csrf_of(client.get("/review").text)


def logged(engine, lane: str, answer: str, *, down: bool = True) -> str:
    with Session(engine) as session:
        row = store.create_completion(
            session, messages=[{"role": "user", "content": f"{answer}?"}], response=answer,
            model="gpt-4o-mini", lane=lane,
        )  # fmt: skip
        session.commit()
        completion_id = row.id
    if down:
        vote(engine, completion_id, "down", "u1")
    return completion_id


def rows_by_lane(html: str, attribute: str = "data-completion") -> dict[str, str]:
    pattern = rf'<tr {attribute}="([^"]+)" data-lane="([^"]+)"'
    return dict(re.findall(pattern, html))


def test_the_review_queue_filters_by_lane_and_each_row_shows_its_lane(client, keys, engine):
    router = logged(engine, "router", "Billing team")
    support = logged(engine, "support", "Wait a week")
    plain = logged(engine, "default", "No idea")
    sign_in(client, keys, "agent")
    every = client.get("/review").text
    assert rows_by_lane(every) == {router: "router", support: "support", plain: "default"}
    assert '<option value="" selected>All lanes</option>' in every
    only = client.get("/review?lane=router").text
    assert rows_by_lane(only) == {router: "router"}
    assert '<option value="router" selected>router</option>' in only
    assert f'href="/review/{router}?lane=router"' in only  # the item page knows the way back
    assert rows_by_lane(client.get("/review?lane=support").text) == {support: "support"}


def test_a_correction_from_a_filtered_queue_returns_to_it_and_stays_in_its_lane(
    client, keys, engine
):
    router, support = logged(engine, "router", "Billing"), logged(engine, "support", "Later")
    csrf = sign_in(client, keys, "agent")
    item = client.get(f"/review/{router}?lane=router").text
    assert 'lane <span class="lane">router</span>' in item
    answer = client.post(
        f"/review/{router}?lane=router",
        data={"csrf_token": csrf, "corrected_response": "Routed to billing.", "note": ""},
    )
    assert (answer.status_code, answer.headers["Location"]) == (303, "/review?lane=router")
    history = client.get("/review/history?lane=router").text
    assert "Routed to billing." in history and 'data-lane="router"' in history
    assert "Routed to billing." not in client.get("/review/history?lane=support").text
    assert rows_by_lane(client.get("/review").text) == {support: "support"}
    metrics = client.get("/metrics").text
    assert 'tuneback_corrections_total{lane="router"} 1.0' in metrics


@pytest.mark.parametrize(
    ("query", "status", "words"),
    [("?lane=nope", 404, "the lanes are: default, router, support"),
     ("?lane=..%2Fetc", 422, "not a valid lane name"),
     ("?lane=" + "x" * 80, 422, "not a valid lane name")],
)  # fmt: skip
def test_a_bad_or_unknown_lane_in_a_page_query_is_a_page_that_says_so(
    client, keys, query, status, words
):
    sign_in(client, keys, "admin")
    for path in ("/review", "/review/history", "/dashboard", "/dashboard/rollback"):
        answer = client.get(path + query)
        assert answer.status_code == status, path
        assert words in answer.text and "<h1>" in answer.text, path


@pytest.fixture
def adapters(app, engine, tmp_path) -> dict[str, list[str]]:
    """default: v1 promoted; router: two passing candidates, the first promoted."""
    settings = app.extensions["tuneback"].settings
    made: dict[str, list[str]] = {}
    for seed, lane in enumerate(("default", "router", "router")):
        folder = make_adapter_files(tmp_path / f"a{seed}", base=BASE_MODEL, seed=seed)
        metrics = {"candidate": {"heldout_overlap": 0.3 + seed / 10}}
        registry = Registry.from_settings(settings, engine, lane=lane)
        row = registry.add(folder, base_model=BASE_MODEL, metrics=metrics, gate=PASS)
        if lane not in made:
            registry.promote(row.version, actor="test")
        made.setdefault(lane, []).append(row.version)
    return made


def serving(engine, lane: str) -> str | None:
    with Session(engine) as session:
        row = adapter_store.promoted_adapter(session, lane)
        return row.version if row else None


def test_the_dashboard_shows_the_selected_lane_only(client, keys, engine, adapters):
    [default_v], [first, second] = adapters["default"], adapters["router"]
    logged(engine, "router", "Billing")
    sign_in(client, keys, "admin")
    page = client.get("/dashboard").text
    assert f'data-version="{default_v}"' in page and f'data-version="{first}"' not in page
    assert f'<span class="value" id="serving">{default_v}</span>' in page
    router = client.get("/dashboard?lane=router").text
    assert f'data-version="{default_v}"' not in router
    assert f'data-version="{first}"' in router and f'data-version="{second}"' in router
    assert f'<span class="value" id="serving">{first}</span>' in router
    assert '<option value="router" selected>router</option>' in router
    assert f'href="/dashboard/promote/{second}?lane=router"' in router
    assert 'href="/dashboard/rollback?lane=router"' in router
    # The lanes table: what serves each lane, and how many completions each has.
    row = r'<tr data-lane="([^"]+)".*?<td>([^<]+)</td><td class="num">(\d+)'
    lanes = re.findall(row, router, re.S)
    expected = [("default", default_v, "0"), ("router", first, "1"), ("support", "base model", "0")]
    assert lanes == expected


def test_promote_and_roll_back_act_on_the_selected_lane_only(client, keys, engine, adapters):
    [default_v], [first, second] = adapters["default"], adapters["router"]
    csrf = sign_in(client, keys, "admin")
    confirm = client.get(f"/dashboard/promote/{second}?lane=router").text
    assert "lane <strong>router</strong>" in confirm and 'name="lane" value="router"' in confirm
    form = {"csrf_token": csrf, "confirm": "yes", "lane": "router"}
    answer = client.post(f"/dashboard/promote/{second}", data=form)
    assert (answer.status_code, answer.headers["Location"]) == (303, "/dashboard?lane=router")
    assert f"Promoted {second} in lane router." in client.get("/dashboard?lane=router").text
    assert (serving(engine, "router"), serving(engine, "default")) == (second, default_v)
    root = app_settings(client).data_dir / "adapters"
    assert (root / "CURRENT-router").read_text().strip() == second
    assert (root / "CURRENT").read_text().strip() == default_v

    # Another lane's version is not this lane's to promote: refused, nothing changes.
    assert client.get(f"/dashboard/promote/{default_v}?lane=router").status_code == 404
    client.post(f"/dashboard/promote/{default_v}", data=form)
    assert "Refused:" in client.get("/dashboard?lane=router").text
    assert (serving(engine, "router"), serving(engine, "default")) == (second, default_v)

    assert f"{second} stops serving; {first} serves" in client.get(
        "/dashboard/rollback?lane=router").text  # fmt: skip
    client.post("/dashboard/rollback", data=form)
    assert f"now serving {first} in lane router" in client.get("/dashboard?lane=router").text
    assert (serving(engine, "router"), serving(engine, "default")) == (first, default_v)
    with Session(engine) as session:
        assert queries.serving_summary(session, "default")["rollback_to"] == "the base model"
        history = queries.serving_summary(session, "router")["history"]
    done = [(e.action, e.version) for e in history][:2]
    assert done == [("rollback", first), ("promote", second)]


def test_a_bad_lane_in_a_dashboard_form_changes_nothing(client, keys, engine, adapters):
    [first, second] = adapters["router"]
    csrf = sign_in(client, keys, "admin")
    for lane, status in (("Router", 422), ("nope", 404)):
        form = {"csrf_token": csrf, "confirm": "yes", "lane": lane}
        assert client.post(f"/dashboard/promote/{second}", data=form).status_code == status
        assert client.post("/dashboard/rollback", data=form).status_code == status
    assert serving(engine, "router") == first


def test_dashboard_totals_and_votes_count_the_selected_lane(engine, session, app):
    logged(engine, "router", "a")
    logged(engine, "router", "b", down=False)
    logged(engine, "support", "c")
    assert queries.counts_summary(session, "router")["completions"] == 2
    assert queries.counts_summary(session, "router")["votes"] == 1
    assert queries.counts_summary(session)["completions"] == 3
    days = queries.votes_per_day(session, days=2, lane="support")
    assert sum(d["down"] for d in days) == 1
    assert sum(d["down"] for d in queries.votes_per_day(session, days=2, lane="default")) == 0


def app_settings(client):  # noqa: ANN001, ANN201
    return client.application.extensions["tuneback"].settings


def test_retrain_now_runs_the_selected_lane_and_its_run_shows_there_only(client, keys, app):
    from tuneback.apps import wire_admin_actions

    wire_admin_actions(app, app.extensions["tuneback"].settings)
    csrf = sign_in(client, keys, "admin")
    answer = client.post("/dashboard/retrain", data={"csrf_token": csrf, "lane": "support"})
    assert (answer.status_code, answer.headers["Location"]) == (303, "/dashboard?lane=support")
    app.extensions["tuneback_web"].retrain_now.join(timeout=60)
    support = client.get("/dashboard?lane=support").text
    assert "No runs yet." not in support and "skipped" in support  # too few examples
    assert "No runs yet." in client.get("/dashboard").text
