"""The feedback widget on another site's page, in a real Chromium."""

from __future__ import annotations

import re

import requests

from tests.web.support import screenshot

KEY_PATTERN = re.compile(r"tb_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}")
HTML_SINKS = re.compile(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write|\beval\(")


def test_a_vote_and_a_comment_from_an_allowed_origin_are_stored(page, site, hosts, shots):
    allowed, _ = hosts
    cid = site.completion("Where is my new card?", "Cards are great!")
    key = site.widget_key(allowed.url)
    page.goto(allowed.chat_page("/vote", site.url, key, [cid]))

    down = page.get_by_role("button", name="Bad answer")
    down.click()
    host = page.locator(f'[data-tuneback-completion="{cid}"]')
    host.and_(page.locator('[data-tuneback-state="sent"]')).wait_for()
    assert down.get_attribute("aria-pressed") == "true"
    assert page.get_by_role("status").first.inner_text() == "Thanks for your feedback."

    page.get_by_label("Tell us more (optional)").fill("It did not answer my question")
    screenshot(page, shots, "widget", target=page.locator("#chat"))
    page.get_by_role("button", name="Send comment").click()
    page.get_by_text("Thanks, your comment was sent.").wait_for()

    _, votes, _ = site.detail(cid)
    assert [(v.rating, v.source, v.comment) for v in votes] == [
        ("down", "widget", "It did not answer my question")
    ]
    assert votes[0].user_ref.startswith("anon-")  # the browser's own id, kept in localStorage


def test_the_widget_works_by_keyboard(page, site, hosts):
    allowed, _ = hosts
    cid = site.completion("Can I pay by card?", "Yes, any major card.")
    page.goto(allowed.chat_page("/keyboard", site.url, site.widget_key(allowed.url), [cid]))
    page.get_by_role("button", name="Good answer").wait_for()
    page.keyboard.press("Tab")  # the first focusable element is the thumbs-up button
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Good answer"
    page.keyboard.press("Enter")
    page.locator('[data-tuneback-state="sent"]').wait_for()
    _, votes, _ = site.detail(cid)
    assert [v.rating for v in votes] == ["up"]


def test_a_lost_answer_is_retried_with_the_same_idempotency_key_and_counted_once(page, site, hosts):
    allowed, _ = hosts
    cid = site.completion("Refund please", "No.")
    page.goto(allowed.chat_page("/retry", site.url, site.widget_key(allowed.url), [cid]))
    sent: list[str] = []

    def lose_first_answer(route):  # noqa: ANN001, ANN202
        if route.request.method != "POST":
            return route.continue_()
        sent.append(route.request.headers["idempotency-key"])
        if len(sent) == 1:
            route.fetch()  # the vote reaches the server and is stored...
            return route.abort("connectionreset")  # ...but its answer never arrives
        return route.continue_()

    page.route(f"{site.url}/v1/feedback", lose_first_answer)
    page.get_by_role("button", name="Bad answer").click()
    page.locator('[data-tuneback-state="sent"]').wait_for()
    assert len(sent) == 2 and sent[0] == sent[1]
    _, votes, _ = site.detail(cid)
    assert len(votes) == 1


def test_a_disallowed_origin_fails_cleanly_and_stores_nothing(page, site, hosts, shots):
    allowed, other = hosts
    cid = site.completion("Is the shop open?", "Maybe.")
    key = site.widget_key(allowed.url)  # the other site is not allowed
    page.goto(other.chat_page("/vote", site.url, key, [cid]))
    page.get_by_role("button", name="Good answer").click()
    page.locator('[data-tuneback-state="error"]').wait_for()
    status = page.get_by_role("status").first.inner_text()
    assert status.startswith("Your feedback was not sent")
    assert page.get_by_role("button", name="Good answer").is_enabled()  # may try again
    _, votes, _ = site.detail(cid)
    assert votes == []


def test_the_script_is_served_for_other_sites_and_holds_no_key(site):
    response = requests.get(f"{site.url}/widget.js", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/javascript")
    assert response.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert KEY_PATTERN.search(response.text) is None
    assert not any(key in response.text for key in site.keys.values())
    # Text goes into the page as text only: no HTML parsing of anything, no eval.
    assert HTML_SINKS.search(response.text) is None
    assert requests.get(f"{site.url}/widget.css", timeout=10).status_code == 200


def _signed_page(host, path: str, site, key: str, answers: list[tuple[str, str | None]]) -> str:
    """A chat page whose backend signed some answers' votes (``data-tuneback-token``)."""
    marks = "".join(
        f'<div class="answer"><div data-tuneback-completion="{cid}"'
        + (f' data-tuneback-token="{token}"' if token else "")
        + "></div></div>"
        for cid, token in answers
    )
    host.pages[path] = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Signed chat</title>"
        f'<script src="{site.url}/widget.js" data-key="{key}" defer></script></head>'
        f"<body><main id=chat>{marks}</main></body></html>"
    )
    return host.url + path


def test_a_signed_answer_votes_as_its_user_and_an_unsigned_one_stays_unverified(page, site, hosts):
    allowed, _ = hosts
    signed, unsigned = site.completion("Fees?", "None."), site.completion("Hours?", "9 to 5.")
    minted = requests.post(
        f"{site.url}/v1/vote-tokens",
        json={"completion_id": signed, "user": "user-42"},
        headers={"Authorization": f"Bearer {site.keys['server']}"},
        timeout=10,
    )
    assert minted.status_code == 200, minted.text
    key = site.widget_key(allowed.url)
    page.goto(
        _signed_page(
            allowed, "/signed", site, key, [(signed, minted.json()["token"]), (unsigned, None)]
        )
    )
    for cid in (signed, unsigned):
        host = page.locator(f'[data-tuneback-completion="{cid}"]')
        host.get_by_role("button", name="Bad answer").click()
        host.and_(page.locator('[data-tuneback-state="sent"]')).wait_for()
    first = page.locator(f'[data-tuneback-completion="{signed}"]')
    first.get_by_role("button", name="Good answer").click()
    page.wait_for_function("document.querySelector('.tuneback-up[aria-pressed=\"true\"]') !== null")
    first.and_(page.locator('[data-tuneback-state="sent"]')).wait_for()
    _, votes, _ = site.detail(signed)
    assert [(v.rating, v.user_ref, v.verified) for v in votes] == [("up", "user-42", True)]
    _, votes, _ = site.detail(unsigned)
    assert [(v.rating, v.verified) for v in votes] == [("down", False)]
    assert votes[0].user_ref.startswith("anon-")  # the browser's claim, kept as such


def test_an_unverified_vote_is_changed_not_doubled_after_a_reload(page, site, hosts):
    allowed, _ = hosts
    cid = site.completion("Can I change my PIN?", "Yes, at any ATM.")
    url = allowed.chat_page("/reload", site.url, site.widget_key(allowed.url), [cid])
    page.goto(url)
    page.get_by_role("button", name="Bad answer").click()
    page.locator('[data-tuneback-state="sent"]').wait_for()
    page.goto(url)  # the same browser, later: its vote's token was kept
    page.get_by_role("button", name="Good answer").click()
    page.locator('[data-tuneback-state="sent"]').wait_for()
    _, votes, _ = site.detail(cid)
    assert [v.rating for v in votes] == ["up"]
