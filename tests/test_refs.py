"""The reference grammar: what is accepted, what is refused, and that no input raises anything else."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bot.errors import BadReference
from bot.refs import ImageRef, parse_reference

HOSTS = ("forgejo.viktorbarzin.me", "forgejo.forgejo.svc.cluster.local", "127.0.0.1:5000")
DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "text, expected",
    [
        ("viktor/app:latest", ImageRef("viktor/app", "latest")),
        ("viktor/team/app:v1.2.3", ImageRef("viktor/team/app", "v1.2.3")),
        (f"viktor/app@{DIGEST}", ImageRef("viktor/app", None, DIGEST)),
        (f"viktor/app:v1@{DIGEST}", ImageRef("viktor/app", "v1", DIGEST)),
        ("forgejo.viktorbarzin.me/viktor/app:latest", ImageRef("viktor/app", "latest")),
        ("FORGEJO.viktorbarzin.me/viktor/app:latest", ImageRef("viktor/app", "latest")),
        ("forgejo.forgejo.svc.cluster.local/viktor/app:latest", ImageRef("viktor/app", "latest")),
        ("127.0.0.1:5000/viktor/app:latest", ImageRef("viktor/app", "latest")),
        ("viktor/my_app.x-y__z:TAG_1", ImageRef("viktor/my_app.x-y__z", "TAG_1")),
        ("  viktor/app:latest  ", ImageRef("viktor/app", "latest")),
        ("viktor/app@sha512:" + "0" * 128, ImageRef("viktor/app", None, "sha512:" + "0" * 128)),
        # A bare name is `:latest`, as docker, skopeo and every registry client read it.
        ("viktor/app", ImageRef("viktor/app", "latest")),
        ("forgejo.viktorbarzin.me/viktor/app", ImageRef("viktor/app", "latest")),
        ("127.0.0.1:5000/viktor/app", ImageRef("viktor/app", "latest")),
    ],
)
def test_accepted_references(text, expected):
    assert parse_reference(text, HOSTS) == expected


@pytest.mark.parametrize(
    "text, reason",
    [
        ("127.0.0.1:5001/viktor/app:latest", "not this bot's registry"),
        ("docker.io/library/alpine:3", "not this bot's registry"),
        ("localhost/viktor/app:1", "not this bot's registry"),
        ("viktor/app:" + "x" * 129, "not a valid tag"),
        ("viktor/app@sha256:" + "g" * 64, "not a digest"),
        ("viktor/app@sha256:" + "A" * 64, "not a digest"),
        ("viktor/app@sha512:" + "0" * 64, "128 hex"),
        ("viktor/-app:1", "not a valid repository name"),
        ("viktor/app/:1", "not a valid repository name"),
        (":latest", "names no repository"),
        ("viktor/app:1\nviktor/b:2", "white space"),
        ("viktor/app;rm -rf /:1", None),
        ("x" * 600, "characters long"),
        ("viktor/app:la\x00st", None),
        # The distribution grammar is ASCII: `\\w` would take Unicode letters and digits.
        ("viktor/app:ünïcode", "not a valid tag"),
        ("viktor/app:v\u0661\u0662", "not a valid tag"),
        ("viktor/app:\u00e9t\u00e9", "not a valid tag"),
        ("viktor/app:ｆｕｌｌ", "not a valid tag"),
    ],
)
def test_refused_references(text, reason):
    with pytest.raises(BadReference) as refused:
        parse_reference(text, HOSTS)
    message = str(refused.value)
    assert "\n" not in message and len(message) < 300
    if reason:
        assert reason in message


@given(st.text(max_size=300))
def test_any_text_is_either_a_reference_or_a_one_line_refusal(text):
    try:
        ref = parse_reference(text, HOSTS)
    except BadReference as exc:
        assert "\n" not in str(exc)
        assert len(str(exc)) < 400
    else:
        assert ref.tag or ref.digest
        # What was accepted is safe to put in a URL path, and ASCII, as the distribution grammar is.
        assert all(c.isascii() and (c.isalnum() or c in "/._-:@") for c in ref.reference + ref.name)


def test_a_reference_has_owner_and_package_name():
    ref = parse_reference("viktor/team/app:1", HOSTS)
    assert (ref.owner, ref.short_name, str(ref)) == ("viktor", "team/app", "viktor/team/app:1")


def test_a_bare_name_says_its_tag_was_implied():
    bare, tagged = parse_reference("viktor/app", HOSTS), parse_reference("viktor/app:latest", HOSTS)
    assert bare == tagged and str(bare) == "viktor/app:latest"
    assert bare.tag_implied and not tagged.tag_implied
    assert bare.implied_note == "no tag given; checked :latest" and tagged.implied_note is None
    assert not parse_reference(f"viktor/app@{DIGEST}", HOSTS).tag_implied


@given(st.text(alphabet=st.characters(min_codepoint=128, exclude_categories=("Cs",)), min_size=1, max_size=20))
@example("\x85")  # NEL: str.strip() took it for white space and dropped it
def test_a_tag_with_any_non_ascii_character_is_refused(extra):
    with pytest.raises(BadReference):
        parse_reference(f"viktor/app:v1{extra}", HOSTS)
