"""The admins' dashboard in a real Chromium: versions, gate reasons, charts, and
promote / roll back through the registry (the same code as `tuneback adapters`)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from feedback import run_store
from feedback.adapters import store as adapter_store
from feedback.adapters.registry import Registry
from feedback.app import create_app
from feedback.db import write_session
from feedback.models import Feedback, utcnow
from tests.web.support import BASE_MODEL, csrf_of, make_adapter_files, screenshot, sign_in


def metrics(candidate: float, champion: float | None, base: float) -> dict:
    out = {"candidate": {"heldout_overlap": candidate, "heldout_loss": 1.5 - candidate},
           "base": {"heldout_overlap": base, "heldout_loss": 1.5 - base}}  # fmt: skip
    if champion is not None:
        out["champion"] = {"heldout_overlap": champion, "heldout_loss": 1.5 - champion}
    return out


def gate(passed: bool, reason: str) -> dict:
    return {"passed": passed, "reasons": [reason], "thresholds": {"primary": "heldout_overlap"}}


@pytest.fixture(scope="module")
def adapters(site, tmp_path_factory):
    """Three versions: v0001 promoted, v0002 rejected by the gate, v0003 a passing candidate."""
    registry = Registry(site.settings.data_dir / "adapters", site.engine)
    sources = tmp_path_factory.mktemp("adapter-sources")
    plan = [
        (0.42, None, 0.12, True, "heldout_overlap 0.42 vs base model 0.12 (margin 0.01): pass"),
        (0.40, 0.42, 0.12, False, "heldout_overlap 0.40 vs champion 0.42: worse, fail"),
        (0.61, 0.42, 0.12, True, "heldout_overlap 0.61 vs champion 0.42 (margin 0.01): pass"),
    ]
    versions = []
    for seed, (cand, champ, base, passed, reason) in enumerate(plan):
        with write_session(site.engine) as session:
            counts = {"train": 40 + 20 * seed, "heldout": 10 + 5 * seed}
            snap = run_store.record_dataset(
                session, content_hash=uuid.uuid4().hex, counts=counts, path=None, examples=[]
            )
            session.commit()
            dataset_id = snap.id
        folder = make_adapter_files(sources / f"a{seed}", base=BASE_MODEL, seed=seed)
        row = registry.add(
            folder, base_model=BASE_MODEL, dataset_id=dataset_id,
            metrics=metrics(cand, champ, base), gate=gate(passed, reason),
            status="candidate" if passed else "rejected",
        )  # fmt: skip
        versions.append(row.version)
        if seed == 0:
            registry.promote(row.version, actor="retrain run r1")
    return versions


def serving(site) -> str | None:
    with Session(site.engine) as session:
        row = adapter_store.promoted_adapter(session)
        return row.version if row else None


def test_the_dashboard_shows_versions_gate_reasons_and_charts(page, site, adapters, shots):
    days = [0, 0, 0, 1, 1, 3, 6, 6, 6, 6, 9, 12]  # days ago of each vote
    for i, ago in enumerate(days):
        cid = site.completion(f"question {i}", f"answer {i}")
        site.vote(cid, "down" if i % 3 == 0 else "up", user=f"u{i}")
        with write_session(site.engine) as session:
            session.execute(
                update(Feedback)
                .where(Feedback.completion_id == cid)
                .values(created_at=utcnow() - timedelta(days=ago))
            )
            session.commit()
    sign_in(page, site, "admin")
    assert page.url == f"{site.url}/dashboard"
    assert page.locator("#serving").inner_text() == adapters[0]
    row = page.locator(f'tr[data-version="{adapters[1]}"]')
    assert "rejected" in row.inner_text()
    assert "worse, fail" in row.inner_text()
    assert "60 / 15" in row.inner_text()  # its dataset's train / held-out sizes
    lines = page.locator("svg polyline.series")
    assert lines.count() == 3  # candidate, champion, base model
    assert len(page.locator("polyline.series-candidate").get_attribute("points").split()) == 3
    assert page.locator("svg rect.bar-up").count() == 30  # one bar per day, gaps included
    heights = [float(h) for h in page.locator("svg rect.bar-up").evaluate_all(
        "bars => bars.map(b => b.getAttribute('height'))")]  # fmt: skip
    assert sum(1 for h in heights if h > 0) == len({d for i, d in enumerate(days) if i % 3})
    assert heights[-7] == max(heights)  # six days ago: two thumbs up, as many as any day
    screenshot(page, shots, "dashboard")


def test_promote_and_roll_back_ask_first_and_use_the_registry(page, site, adapters, shots):
    first, rejected, candidate = adapters
    sign_in(page, site, "admin")
    page.locator(f'tr[data-version="{candidate}"]').get_by_role("link", name="Promote").click()
    page.get_by_role("heading", name=f"Promote {candidate}?").wait_for()
    assert serving(site) == first  # nothing happens before the confirmation
    screenshot(page, shots, "dashboard-confirm")
    page.get_by_role("button", name="Yes, promote").click()
    page.get_by_text(f"Promoted {candidate}.").wait_for()
    assert serving(site) == candidate
    assert (site.settings.data_dir / "adapters" / "CURRENT").read_text().strip() == candidate

    page.get_by_role("link", name=f"Roll back to {first}").click()
    page.get_by_role("button", name="Yes, roll back").click()
    page.get_by_text(f"Rolled back: now serving {first}.").wait_for()
    assert serving(site) == first
    with Session(site.engine) as session:
        actors = [e.actor for e in adapter_store.promotion_history(session, limit=2)]
    assert actors == ["dashboard: Ada", "dashboard: Ada"]

    # The registry refuses what the gate rejected, and the page says why.
    page.locator(f'tr[data-version="{rejected}"]').get_by_role("link", name="Promote").click()
    page.get_by_role("button", name="Yes, promote").click()
    page.get_by_text("Refused:").wait_for()
    assert "rejected by the gate" in page.get_by_role("alert").inner_text()
    assert serving(site) == first


def test_retrain_now_starts_a_cycle_that_the_runs_table_shows(page, site, adapters):
    sign_in(page, site, "admin")
    page.get_by_role("button", name="Retrain now").click()
    page.get_by_text("Retrain started.").wait_for()
    site.app.extensions["tuneback_web"].retrain_now.join(timeout=60)
    page.reload()
    runs = page.get_by_role("region", name="Retrain runs")
    assert "skipped" in runs.inner_text()  # a handful of votes is not enough data


def test_without_the_trainer_retrain_says_so_and_the_registry_still_answers(tmp_path, site):
    """`create_app` alone (no composition root) cannot retrain, but promote and roll
    back call the registry directly, so they are offered there too."""
    app = create_app(site.settings, engine=site.engine)
    client = app.test_client()
    form = client.get("/signin")
    client.post("/signin", data={"key": site.keys["admin"], "csrf_token": csrf_of(form.text)})
    html = client.get("/dashboard").text
    assert "not wired in this process" in html
    assert '<button type="submit" disabled' in html
    assert "Yes, roll back" in client.get("/dashboard/rollback").text
    answer = client.post("/dashboard/rollback", data={"csrf_token": csrf_of(html)})
    assert answer.status_code == 303
    after = client.get("/dashboard").text
    assert "the rollback was not confirmed" in after and "not available" not in after
