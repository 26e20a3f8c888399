"""The browser pages under hostile requests (issue 23, items 7 to 10 and 14).

Each test replays one attack from the second outside review against the app on
SQLite and PostgreSQL, through Flask's test client (no browser needed):

* 7: a page offset past any integer the database takes is a page, not a 500;
* 8: a link cannot plant the text of a correction (``?draft=``) for an agent to save;
* 9: CR/LF (any control character) in the sign-in's ``next`` is refused, not a 500;
* 10: signing out ends the session on the server: a copy of the cookie is dead;
* 14: the demo chat answers loopback host names only (DNS rebinding).
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from feedback import models, store
from feedback.web import hooks
from tests.conftest import auth

COOKIE = "tuneback_session"


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(client, key: str, next_path: str = ""):  # noqa: ANN001, ANN201
    """Post the sign-in form as a browser would (token from the form first)."""
    form = client.get("/signin")
    return client.post(
        "/signin",
        data={"key": key, "next": next_path, "csrf_token": csrf_of(form.text)},
    )


def cookie_of(client) -> str:  # noqa: ANN001
    return client.get_cookie(COOKIE).value


# --- 7: offsets past any integer ---------------------------------------------------


@pytest.mark.parametrize(
    "offset", ["99999999999999999999", "9223372036854775808", "-99999999999999999999", "1e9"]
)
def test_a_huge_review_offset_is_a_page_not_a_500(client, keys, offset):
    sign_in(client, keys["agent"])
    response = client.get(f"/review?offset={offset}")
    assert response.status_code == 200
    assert "<h1>Review queue" in response.text


def test_the_page_clamps_offsets_where_the_api_stops_taking_them():
    from pydantic import ValidationError

    from feedback.schemas import PageQuery
    from feedback.web.review import MAX_OFFSET

    assert PageQuery(offset=MAX_OFFSET).offset == MAX_OFFSET
    with pytest.raises(ValidationError):
        PageQuery(offset=MAX_OFFSET + 1)


# --- 8: no planted drafts ----------------------------------------------------------


def test_a_link_cannot_plant_the_text_of_a_correction(client, keys, completion_id):
    planted = "PLANTED: tell every customer to send their PIN by email"
    target = f"/review/{completion_id}?draft={planted.replace(' ', '+')}"
    # The link goes through the sign-in form and lands on the item, text and all.
    landed = sign_in(client, keys["agent"], next_path=target)
    assert landed.status_code == 303 and landed.headers["Location"] == target
    page = client.get(landed.headers["Location"])
    assert page.status_code == 200
    assert "PLANTED" not in page.text
    form = re.search(r"<textarea[^>]*corrected_response[^>]*>(.*?)</textarea>", page.text, re.S)
    assert form.group(1) == "Please wait."  # the answer itself, for the agent to edit


# --- 9: control characters in the redirect target ----------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/review\r\nSet-Cookie: tuneback_session=planted",
        "/review\nX-Injected: 1",
        "/review\r",
        "/dashboard\x00",
        "/review\t/evil.test",
        "/review\x7f",
        "/review\x85",
        "/review\u2028",
        "//evil.test/",
        "/\\evil.test",
        "https://evil.test/review",
    ],
)
def test_a_hostile_next_is_refused_not_a_500(client, keys, target):
    response = sign_in(client, keys["agent"], next_path=target)
    assert response.status_code == 303
    assert response.headers["Location"] == "/review"
    assert "X-Injected" not in response.headers
    assert "planted" not in str(response.headers.getlist("Set-Cookie"))


def test_a_path_with_encoded_crlf_survives_the_sign_in_round_trip(client, keys):
    """GET /review/%0d%0a... sends the browser to sign in with a decoded CR/LF in next."""
    bounce = client.get("/review/x%0D%0AX-Injected:%201")
    assert bounce.status_code == 302
    response = sign_in(client, keys["agent"], next_path="/review/x\r\nX-Injected: 1")
    assert response.status_code == 303 and "X-Injected" not in response.headers


# --- 10: sign-out ends the session on the server -----------------------------------


def test_a_cookie_copied_before_sign_out_is_dead_after_it(app, client, keys):
    sign_in(client, keys["agent"])
    stolen = cookie_of(client)
    page = client.get("/review")
    assert page.status_code == 200
    client.post("/signout", data={"csrf_token": csrf_of(page.text)})

    thief = app.test_client()
    thief.set_cookie(COOKIE, stolen)
    answer = thief.get("/review")
    assert answer.status_code == 302 and "/signin" in answer.headers["Location"]


def test_sign_out_ends_only_its_own_session(app, engine, keys):
    first, second = app.test_client(), app.test_client()
    sign_in(first, keys["agent"])
    sign_in(second, keys["agent"])
    with Session(engine) as session:
        assert len(session.execute(select(models.WebSession)).all()) == 2
    page = first.get("/review")
    first.post("/signout", data={"csrf_token": csrf_of(page.text)})
    assert first.get("/review").status_code == 302
    assert second.get("/review").status_code == 200
    with Session(engine) as session:
        assert len(session.execute(select(models.WebSession)).all()) == 1


def test_a_session_ends_after_its_lifetime_even_if_the_cookie_is_refreshed(app, engine, keys):
    client = app.test_client()
    sign_in(client, keys["agent"])
    assert client.get("/review").status_code == 200
    lifetime = app.permanent_session_lifetime
    with Session(engine) as session:
        expired = models.utcnow() - lifetime - timedelta(minutes=1)
        session.execute(update(models.WebSession).values(created_at=expired))
        session.commit()
    assert client.get("/review").status_code == 302


def test_a_deleted_session_row_signs_the_browser_out(app, engine, keys):
    """Every request checks the row: another worker's sign-out holds here too."""
    client = app.test_client()
    sign_in(client, keys["admin"])
    assert client.get("/dashboard").status_code == 200
    with Session(engine) as session:
        session.execute(delete(models.WebSession))
        session.commit()
    assert client.get("/dashboard").status_code == 302


def test_the_cookie_carries_neither_the_key_nor_the_stored_session_id(app, engine, keys):
    client = app.test_client()
    sign_in(client, keys["agent"])
    value = cookie_of(client)
    with Session(engine) as session:
        (row,) = session.execute(select(models.WebSession)).scalars().all()
        key = store.find_active_key(session, keys["agent"])
    assert keys["agent"] not in value and row.id not in value
    assert row.key_id == key.id


def test_a_session_of_a_revoked_key_is_dead(app, engine, keys):
    client = app.test_client()
    sign_in(client, keys["agent"])
    with Session(engine) as session:
        store.revoke_api_key(session, key_id=store.find_active_key(session, keys["agent"]).id)
        session.commit()
    assert client.get("/review").status_code == 302


# --- 14: the demo chat and DNS rebinding -------------------------------------------


@pytest.fixture
def demo_app(app):
    """The app with the demo page wired as ``tuneback up`` on 127.0.0.1:8000 wires it."""
    from tuneback.apps import demo_hosts

    calls: list = []

    def chat(messages):  # noqa: ANN001, ANN202
        calls.append(messages)
        return iter([b"data: [DONE]\n\n"])

    web = hooks(app)
    web.demo_chat, web.demo_widget_key = chat, "tb_widget_demo"
    web.demo_hosts = demo_hosts(app.extensions["tuneback"].settings)
    app.demo_calls = calls
    return app


def _chat(app, host: str):  # noqa: ANN001, ANN202
    """Open the page under ``host``, then chat with a valid session cookie and CSRF token
    (a rebound page has both: the browser treats it as this server's origin)."""
    client = app.test_client()
    page = client.get("/", headers={"Host": host})
    cookie = app.session_interface.get_signing_serializer(app).dumps({"csrf": "t" * 43})
    answer = app.test_client(use_cookies=False).post(
        "/demo/chat",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers={"Host": host, "X-CSRF-Token": "t" * 43, "Cookie": f"{COOKIE}={cookie}"},
    )
    return page, answer


@pytest.mark.parametrize(
    "host", ["evil.test:8000", "evil.test", "127.0.0.1.evil.test:8000", "localhost.:8000",
             "10.0.0.5:8000", "0.0.0.0:8000", "127.0.0.2:8000", "localhost:8001"],
)  # fmt: skip
def test_the_demo_chat_refuses_foreign_host_names(demo_app, host):
    page, answer = _chat(demo_app, host)
    assert page.status_code in (403, 404) and answer.status_code in (403, 404)
    assert "loopback" in answer.text  # refused for its Host, not for want of a token
    assert "tb_widget_demo" not in page.text
    assert demo_app.demo_calls == []


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "LOCALHOST:8000"])
def test_the_demo_chat_answers_on_loopback_names(demo_app, host):
    page, answer = _chat(demo_app, host)
    assert page.status_code == 200 and answer.status_code == 200
    assert len(demo_app.demo_calls) == 1


def test_the_api_is_not_bound_to_loopback_names(client, keys):
    """Only the keyless demo chat checks Host: the API behind a proxy keeps working."""
    response = client.get("/v1/review-queue", headers=auth(keys["agent"], Host="tuneback.example"))
    assert response.status_code == 200


# --- more of the same kind: hostile ids in page paths -------------------------------


@pytest.mark.parametrize("ident", ["%00", "x" * 300, "a%0D%0Ab", "%E2%80%A8", "%F0%9F%92%A5"])
def test_hostile_ids_in_page_paths_are_a_404_not_a_500(client, keys, ident):
    sign_in(client, keys["admin"])
    page = client.get(f"/review/{ident}")
    assert page.status_code == 404
    token = csrf_of(page.text)
    posted = client.post(f"/review/{ident}", data={"corrected_response": "x", "csrf_token": token})
    assert posted.status_code == 404
    assert client.get(f"/dashboard/promote/{ident}").status_code == 404
    promoted = client.post(
        f"/dashboard/promote/{ident}", data={"confirm": "yes", "csrf_token": token}
    )
    assert promoted.status_code == 303
    assert "Refused" in client.get("/dashboard").text
