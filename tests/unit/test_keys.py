"""User ids in Redis key names (sessions/keys.py): ordinary ids keep their names, and no id can
make its keys look like another user's (issue 12, defect 6: ``tagx`` matched ``tagx}:evil``)."""

from __future__ import annotations

import itertools

import pytest

from sessions.keys import channel_key, decode_user, encode_user, feed_key, user_tag

ORDINARY = [
    "tagx",
    "alice",
    "u-1",
    "anon:Xy3_aQ-9",
    "a:b",
    "v.3f2a@shop.example",
    "josé",
    "用户",
    "a b",
]
HOSTILE = [
    "tagx}:evil",
    "tagx}",
    "}",
    "{u:x}",
    "tagx*",
    "*",
    "tagx?",
    "tagx[a-z]",
    "tagx]",
    "tagx\\",
    "tagx\\*",
    "tagx%",
    "tagx%7D:evil",
    "tagx%7d",
    "tagx\n",
    "tagx\x00",
    "tagx\x7f",
    "tagx\x1b[0m",
]


@pytest.mark.parametrize("user", ORDINARY)
def test_ordinary_ids_keep_their_key_names(user: str) -> None:
    assert encode_user(user) == user
    assert user_tag(user) == f"pr:{{u:{user}}}:"


@pytest.mark.parametrize("user", HOSTILE)
def test_encoded_ids_hold_no_brace_glob_special_or_control_character(user: str) -> None:
    encoded = encode_user(user)
    assert not set(encoded) & set("{}*?[]\\")
    assert encoded.isprintable()
    # The tag's closing brace is the only one: Redis's hash tag is exactly the encoded id.
    tag = user_tag(user)
    assert tag.count("{") == 1 and tag.count("}") == 1


def test_known_encodings() -> None:
    assert encode_user("tagx}:evil") == "tagx%7D:evil"
    assert encode_user("a%b") == "a%25b"
    assert encode_user("*?[]{}\\") == "%2A%3F%5B%5D%7B%7D%5C"
    assert encode_user("x\n") == "x%0A"


@pytest.mark.parametrize("user", ORDINARY + HOSTILE)
def test_decoding_gives_the_id_back(user: str) -> None:
    assert decode_user(encode_user(user)) == user


def test_encoding_is_one_to_one() -> None:
    ids = ORDINARY + HOSTILE
    assert len({encode_user(u) for u in ids}) == len(ids)


@pytest.mark.parametrize(("a", "b"), list(itertools.permutations(ORDINARY + HOSTILE, 2)))
def test_no_users_tag_is_a_prefix_of_another_users_keys(a: str, b: str) -> None:
    """A ``SCAN MATCH <tag>*`` of one user can never find another user's key."""
    for key in (feed_key(b, "home"), channel_key(b), user_tag(b) + "recent"):
        assert not key.startswith(user_tag(a))


def test_decoding_refuses_what_encoding_never_makes() -> None:
    for bad in ("a}", "a%7", "a%zz", "a%41"):  # %41 is "A", never escaped
        with pytest.raises(ValueError):
            decode_user(bad)
