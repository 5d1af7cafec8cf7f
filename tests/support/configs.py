"""Configuration text the config tests write: a key that must never show, one folder."""

from __future__ import annotations

SECRET = "sk-secret-123"
FOLDER = '[[folder]]\ninbox = "in"\noutbox = "out"\nquarantine = "q"\n'
