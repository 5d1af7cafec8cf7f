"""The API's endpoint names: what the client sends to, and the ``endpoint`` metric label.

Written here once so that :mod:`bgsyncd.api.client` (which sends to them) and
:mod:`bgsyncd.ops.metrics` (which makes a series for each) share them without the
metrics importing the client, and with it httpx.
"""

from __future__ import annotations

REMOVE_BACKGROUND = "image-without-background"
REMOVE_BACKGROUND_BASE64 = "image-without-background-base64"
ALPHA_CHANNEL = "alpha-channel"
ALPHA_CHANNEL_BASE64 = "alpha-channel-base64"
AVAILABLE_CREDIT = "available-credit"
ENDPOINTS = (
    REMOVE_BACKGROUND,
    REMOVE_BACKGROUND_BASE64,
    ALPHA_CHANNEL,
    ALPHA_CHANNEL_BASE64,
    AVAILABLE_CREDIT,
)
# The endpoints the worker uploads files to (it never calls the base64 ones).
UPLOAD_ENDPOINTS = (REMOVE_BACKGROUND, ALPHA_CHANNEL)
