"""The webhook call against a real loopback receiver: signed, never redirected, 2xx only."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator

import pytest

from bgsyncd.api.webhook import WebhookSender, signature
from tests.support.receiver import Receiver


@pytest.fixture
def sender() -> Iterator[WebhookSender]:
    s = WebhookSender()
    yield s
    s.close()


def test_a_signed_post_that_the_receiver_can_check(sender: WebhookSender) -> None:
    receiver = Receiver().start()
    try:
        body = json.dumps({"event": "done", "event_id": "e-1"}).encode()
        answer = sender.post(
            receiver.url, body, event="done", event_id="e-1", secret=b"s3cret", timeout=10
        )
        assert answer.ok and answer.status == 200
        (call,) = receiver.calls
        assert call.body == body
        assert call.headers["Content-Type"] == "application/json"
        assert call.headers["X-Bgsyncd-Event"] == "done"
        assert call.headers["X-Bgsyncd-Event-Id"] == "e-1"
        expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        assert call.headers["X-Bgsyncd-Signature"] == expected == signature(b"s3cret", body)
    finally:
        receiver.stop()


def test_without_a_secret_no_signature_is_sent(sender: WebhookSender) -> None:
    receiver = Receiver().start()
    try:
        assert sender.post(receiver.url, b"{}", event="done", event_id="e", secret=None,
                           timeout=10).ok  # fmt: skip
        assert "X-Bgsyncd-Signature" not in receiver.calls[0].headers
    finally:
        receiver.stop()


def test_a_redirect_is_a_failure_and_its_target_is_never_called(sender: WebhookSender) -> None:
    target = Receiver().start()
    redirect = Receiver(answer=lambda n: (307, {"Location": target.url})).start()
    try:
        answer = sender.post(redirect.url, b"{}", event="done", event_id="e", secret=None,
                             timeout=10)  # fmt: skip
        assert not answer.ok and answer.status == 307
        assert len(redirect.calls) == 1 and target.calls == []
    finally:
        redirect.stop()
        target.stop()


@pytest.mark.parametrize("status", [400, 404, 500, 503])
def test_any_other_status_is_a_failure(sender: WebhookSender, status: int) -> None:
    receiver = Receiver(answer=lambda n: status).start()
    try:
        answer = sender.post(receiver.url, b"{}", event="done", event_id="e", secret=None,
                             timeout=10)  # fmt: skip
        assert not answer.ok and answer.status == status
    finally:
        receiver.stop()


def test_a_refused_connection_is_a_failure(sender: WebhookSender) -> None:
    receiver = Receiver().start()
    url = receiver.url
    receiver.stop()
    answer = sender.post(url, b"{}", event="done", event_id="e", secret=b"k", timeout=5)
    assert not answer.ok and answer.status is None
    assert "k" not in answer.detail.split()


@pytest.mark.parametrize(
    "url", ["http://localhost:808O/hook", "http://xn--/", "http://" + "a" * 300 + ".com/",
            "http://127.0.0.1:8/\r\nX: y"],
)  # fmt: skip
def test_a_url_httpx_cannot_use_is_a_failure_never_an_exception(
    sender: WebhookSender, url: str
) -> None:
    answer = sender.post(url, b"{}", event="done", event_id="e", secret=b"s3cr3t", timeout=2)
    assert not answer.ok and answer.status is None and answer.detail
    assert "s3cr3t" not in answer.detail
