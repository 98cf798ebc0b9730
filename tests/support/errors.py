"""What every error the gateway answers must look like: OpenAI's shape, no traceback."""

from __future__ import annotations

import httpx


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    """Check `response` is an OpenAI-style JSON error with `status` and `code`; its `error`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["code"] == code
    assert error["message"]
    assert "Traceback" not in response.text
    return dict(error)
