"""The agents' review console in a real Chromium: sign in, correct, CSRF, sessions."""

from __future__ import annotations

import requests
from sqlalchemy.orm import Session

from feedback import store
from tests.web.support import csrf_of, error_code, screenshot, sign_in


def test_an_agent_corrects_a_queued_answer_and_it_leaves_the_queue(page, site, shots):
    cid = site.completion(
        "I still have not received my new card, what do I do?", "Cards are great!"
    )
    site.vote(cid, "down", reason="unhelpful", comment="Did not answer my question")

    page.goto(f"{site.url}/review")
    assert page.url.startswith(f"{site.url}/signin?next=")  # signed out: sent to sign in
    screenshot(page, shots, "signin")
    page.get_by_label("Key").fill(site.keys["agent"])
    page.get_by_role("button", name="Sign in").click()
    row = page.locator(f'tr[data-completion="{cid}"]')
    row.wait_for()
    screenshot(page, shots, "review-queue")

    row.get_by_role("link", name="Correct").click()
    page.get_by_text("Did not answer my question").wait_for()
    fixed = "Sorry about that. New cards arrive within 5 working days."
    page.get_by_label("What the assistant should have said").fill(fixed)
    page.get_by_label("Note for the record (optional)").fill("card delivery policy")
    screenshot(page, shots, "review-item")
    page.get_by_role("button", name="Save correction").click()

    page.get_by_text("Correction saved").wait_for()
    assert page.url == f"{site.url}/review"
    assert page.locator(f'tr[data-completion="{cid}"]').count() == 0
    _, _, fixes = site.detail(cid)
    assert [(f.corrected_response, f.note, f.author, f.status) for f in fixes] == [
        (fixed, "card delivery policy", "Dana", "active")
    ]
    with Session(site.engine) as session:
        queued, _ = store.review_queue(session, limit=100)
    assert cid not in [c.id for c, _, _ in queued]

    page.get_by_role("link", name="Corrections").click()
    page.get_by_text(fixed).wait_for()
    screenshot(page, shots, "review-history")


def test_a_form_post_without_the_csrf_token_is_refused(page, site):
    cid = site.completion("Where is my parcel?", "Somewhere.")
    site.vote(cid, "down")
    sign_in(page, site, "agent")
    page.goto(f"{site.url}/review/{cid}")
    page.get_by_label("What the assistant should have said").fill("Tracking is in your email.")
    form = page.get_by_role("region", name="Corrected answer")
    form.locator('input[name="csrf_token"]').evaluate("node => node.remove()")
    with page.expect_response(f"{site.url}/review/{cid}") as answer:
        page.get_by_role("button", name="Save correction").click()
    assert answer.value.status == 403
    assert error_code(answer.value.text()) == "csrf_failed"
    _, _, fixes = site.detail(cid)
    assert fixes == []


def test_a_form_posted_from_another_site_changes_nothing(page, site, hosts):
    """A signed-in agent visits a hostile page that auto-submits a correction form."""
    allowed, _ = hosts
    cid = site.completion("Close my account", "Done.")
    site.vote(cid, "down")
    sign_in(page, site, "agent")
    allowed.pages["/attack"] = (
        f'<form id=f method=post action="{site.url}/review/{cid}">'
        '<input name=corrected_response value="pwned"><input name=csrf_token value="guess">'
        "</form><button id=go onclick=\"document.getElementById('f').submit()\">go</button>"
    )
    page.goto(f"{allowed.url}/attack")
    with page.expect_navigation():
        page.click("#go")
    _, _, fixes = site.detail(cid)
    assert fixes == []


def test_a_key_that_cannot_sign_in_is_told_why(page, site, hosts):
    page.goto(f"{site.url}/signin")
    page.get_by_label("Key").fill(site.widget_key(hosts[0].url))
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("A widget key cannot sign in here").wait_for()
    page.get_by_label("Key").fill("tb_000000000000_not-a-real-key")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("That key is unknown or revoked.").wait_for()


def test_revoking_a_key_signs_its_sessions_out(page, site):
    with Session(site.engine) as session:
        key, plaintext = store.create_api_key(session, role="agent", name="Temp")
        key_id = key.id
        session.commit()
    site.keys["temp"] = plaintext
    sign_in(page, site, "temp")
    assert page.url == f"{site.url}/review"
    with Session(site.engine) as session:
        store.revoke_api_key(session, key_id=key_id)
        session.commit()
    page.goto(f"{site.url}/review")
    assert page.url.startswith(f"{site.url}/signin")


def test_an_agent_may_not_open_the_dashboard(page, site):
    sign_in(page, site, "agent")
    response = page.goto(f"{site.url}/dashboard")
    assert response.status == 403
    page.get_by_text("A agent key cannot open this page.").wait_for()


def test_the_session_cookie_is_httponly_and_samesite(site):
    http = requests.Session()
    form = http.get(f"{site.url}/signin", timeout=10)
    answer = http.post(
        f"{site.url}/signin",
        data={"key": site.keys["agent"], "csrf_token": csrf_of(form.text), "next": "//evil.test/"},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/review"  # never off-site
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert site.keys["agent"] not in cookie


def test_the_lane_selector_keeps_one_lanes_answers_through_a_correction(page, site, shots):
    """No script: the selector is a GET form; the filter survives the item page and the save."""
    from feedback.lanes import create_lane, lane_names

    with Session(site.engine) as session:
        if "billing" not in lane_names(session):
            create_lane(session, name="billing", description="the billing assistant")
            session.commit()
    billed = site.completion("Why was I charged twice?", "Charges happen.", lane="billing")
    other = site.completion("Where is my card?", "Somewhere.")
    for cid in (billed, other):
        site.vote(cid, "down")
    sign_in(page, site, "agent")
    assert page.locator(f'tr[data-completion="{other}"] td.lane').inner_text() == "default"
    page.get_by_label("Lane", exact=True).select_option("billing")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(f"{site.url}/review?lane=billing")
    assert page.locator(f'tr[data-completion="{other}"]').count() == 0
    row = page.locator(f'tr[data-completion="{billed}"]')
    assert row.locator("td.lane").inner_text() == "billing"
    screenshot(page, shots, "review-queue-lane")
    row.get_by_role("link", name="Correct").click()
    page.get_by_label("What the assistant should have said").fill("One charge was a hold.")
    page.get_by_role("button", name="Save correction").click()
    page.get_by_text("Correction saved").wait_for()
    assert page.url == f"{site.url}/review?lane=billing"
    assert page.get_by_label("Lane", exact=True).input_value() == "billing"
