"""API keys: hashed at rest, shown once, revocable; the first start of an empty store makes one admin key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.collections.manifest import NAME
from cluster.errors import InvalidRequest
from cluster.keys.access import Action, KeyStore, NotAuthenticated, Role
from cluster.storage import LocalStore
from cluster.text import check_text


def test_keys_are_stored_only_as_hashes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    keys = KeyStore(store)
    key, token = keys.create(Role.SEARCHER, ["alpha"])
    secret = token.split(".", 1)[1]
    assert secret not in store.get("access/keys.json").decode()
    caller = keys.authenticate(token).caller("127.0.0.1")
    assert caller.may(Action.SEARCH, "alpha") and not caller.may(Action.SEARCH, "beta")
    assert not caller.may(Action.FACES_DELETE, "alpha")
    with pytest.raises(NotAuthenticated):
        keys.authenticate(token[:-2] + "xx")
    keys.revoke(key.key_id)
    with pytest.raises(NotAuthenticated, match="revoked"):
        KeyStore(store).authenticate(token)


def test_bootstrap_admin_only_once(tmp_path: Path) -> None:
    keys = KeyStore(LocalStore(tmp_path))
    token = keys.bootstrap_admin()
    assert token and keys.authenticate(token).role == Role.ADMIN
    assert keys.bootstrap_admin() is None


def test_missing_or_malformed_key_is_401(tmp_path: Path) -> None:
    keys = KeyStore(LocalStore(tmp_path))
    for token in (None, "", "Bearer", "fgk_nodot", "other_abc.def"):
        with pytest.raises(NotAuthenticated):
            keys.authenticate(token)


def test_the_last_admin_key_cannot_be_revoked(tmp_path: Path) -> None:
    keys = KeyStore(LocalStore(tmp_path))
    first, _ = keys.create(Role.ADMIN)
    with pytest.raises(InvalidRequest, match="last admin key"):
        keys.revoke(first.key_id)
    second, _ = keys.create(Role.ADMIN)
    keys.revoke(first.key_id)  # another admin key is there now
    with pytest.raises(InvalidRequest, match="last admin key"):
        keys.revoke(second.key_id)


@pytest.mark.parametrize("bad", ["nl\n", "a\x00b", "tab\tname", "rtl\u202eexe", "x" * 65, ""])
def test_names_and_case_ids_are_whole_and_printable(bad: str) -> None:
    assert not NAME.fullmatch(bad)
    if bad and len(bad) < 65:
        with pytest.raises(InvalidRequest, match="control or bidi"):
            check_text(bad, "case_id")
