"""The one private tritonclient call the router makes is checked when the router starts."""

from __future__ import annotations

import pytest
import tritonclient.http.aio as triton_http

from tierplace.router import tiers


def test_the_private_post_is_found_with_the_parameters_post_body_passes() -> None:
    assert tiers._private_post() is triton_http.InferenceServerClient._post


def test_a_tritonclient_that_changed_its_private_post_fails_at_start_with_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def reshaped(self: object, request_uri: str, body: bytes) -> None:
        raise AssertionError("never called")

    monkeypatch.setattr(triton_http.InferenceServerClient, "_post", reshaped)
    with pytest.raises(ImportError, match="post_body needs it"):
        tiers._private_post()
    monkeypatch.delattr(triton_http.InferenceServerClient, "_post")
    with pytest.raises(ImportError, match="_post is gone or changed"):
        tiers._private_post()
