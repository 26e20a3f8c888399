"""Review finding 13: OpenAI clients send harmless defaults that were refused with a 400.

`logprobs: false`, zero penalties, an assistant turn with `content: null` change
nothing here and are accepted; values that would change the answer are refused by
name, and no message carries pydantic's "Value error," prefix.
"""

from __future__ import annotations

import openai
import pytest

from serve.schemas import ChatRequestError, parse_chat_request
from tests.serve.support import MESSAGES

NEUTRAL = {
    "logprobs": False,
    "top_logprobs": 0,
    "presence_penalty": 0,
    "frequency_penalty": 0.0,
    "logit_bias": {},
    "tools": [],
    "tool_choice": "none",
    "parallel_tool_calls": True,
    "store": False,
    "service_tier": "auto",
}


def body(**extra) -> dict:  # noqa: ANN003
    return {"model": "default", "messages": MESSAGES, **extra}


def test_neutral_defaults_and_a_null_assistant_content_are_accepted():
    conversation = [
        *MESSAGES,
        {"role": "assistant", "content": None},
        {"role": "user", "content": "And now?"},
    ]
    request = parse_chat_request({**body(**NEUTRAL), "messages": conversation})
    assert [m["content"] for m in request.plain_messages()] == [
        MESSAGES[0]["content"],
        "",
        "And now?",
    ]
    assert parse_chat_request(body(logprobs=None, presence_penalty=None)).model == "default"


@pytest.mark.parametrize(
    "name, value",
    [
        ("logprobs", True),
        ("presence_penalty", 0.5),
        ("frequency_penalty", -1),
        ("logit_bias", {"50256": -100}),
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("tool_choice", "required"),
        ("top_logprobs", 3),
        ("presence_penalty", False),  # not a number
        ("store", True),
        ("service_tier", "flex"),
    ],
)
def test_values_that_change_the_answer_are_refused_by_name(name, value):
    with pytest.raises(ChatRequestError, match=rf"^{name}: .* is not supported"):
        parse_chat_request(body(**{name: value}))


def test_a_user_message_still_needs_content_and_messages_carry_no_pydantic_prefix():
    with pytest.raises(ChatRequestError) as caught:
        parse_chat_request(body(messages=[{"role": "user", "content": None}]))
    assert "content" in str(caught.value) and "Value error" not in str(caught.value)
    with pytest.raises(ChatRequestError) as caught:
        parse_chat_request(body(stop=["a", "b", "c", "d", "e"]))
    assert str(caught.value) == "stop: at most 4 sequences"


@pytest.fixture(scope="module")
def live(module_servers):
    return module_servers()


def test_the_openai_client_with_its_defaults_is_answered(live):
    answer = live.client().chat.completions.create(
        model="default",
        messages=[*MESSAGES, {"role": "assistant", "content": None}, *MESSAGES],
        logprobs=False,
        presence_penalty=0,
        frequency_penalty=0,
        max_tokens=4,
    )
    assert answer.choices[0].message.content is not None
    with pytest.raises(openai.BadRequestError) as caught:
        live.client().chat.completions.create(
            model="default", messages=MESSAGES, presence_penalty=1.5, max_tokens=4
        )
    assert "presence_penalty" in caught.value.body["message"]
