"""Settings that fail at start, with their name, rather than on some later request."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from feedback.settings import Settings


@pytest.mark.parametrize("name", ["rate_limit", "widget_rate_limit", "widget_key_rate_limit"])
@pytest.mark.parametrize("value", ["", "lots", "10/fortnight", "ten/minute"])
def test_a_rate_limit_not_in_the_limiter_notation_is_refused(name, value):
    with pytest.raises(ValidationError, match=name):
        Settings(**{name: value})


def test_rate_limits_in_the_notation_are_kept():
    settings = Settings(rate_limit="5/second", widget_rate_limit="10 per minute;2/second")
    assert (settings.rate_limit, settings.widget_rate_limit) == (
        "5/second",
        "10 per minute;2/second",
    )


def test_a_schema_cache_smaller_than_one_index_is_refused_at_start():
    with pytest.raises(ValidationError, match="TUNEBACK_SERVE_SCHEMA_CACHE_MB"):
        Settings(serve_schema_cache_mb=32, serve_schema_index_mb=64)
