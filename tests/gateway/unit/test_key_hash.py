"""gateway/keys/store.py: what a key is stored and looked up as."""

from __future__ import annotations

import hashlib
import secrets

from gateway.keys.store import KEY_PREFIX, SHOWN_CHARS, hash_key


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def test_the_hash_covers_the_whole_key_not_its_visible_prefix() -> None:
    """Listings and logs show a key's first SHOWN_CHARS characters: a string sharing them is another key."""
    key = new_key()
    assert hash_key(key[:SHOWN_CHARS] + secrets.token_urlsafe(32)) != hash_key(key)
    assert hash_key(key[:SHOWN_CHARS]) != hash_key(key)
    last = "A" if key[-1] != "A" else "B"
    assert hash_key(key[:-1] + last) != hash_key(key)  # the last character counts too
    assert hash_key(key + "x") != hash_key(key)


def test_the_stored_hash_is_the_keys_sha256() -> None:
    """Keys are looked up by this value in the database: it must stay sha256 of the key's UTF-8 text, or every
    key issued before a change stops working."""
    key = new_key()
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert hash_key(key) == hash_key(str(key))
