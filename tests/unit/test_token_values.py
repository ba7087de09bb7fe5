"""Token values: format, checksum, and what can be refused without any lookup."""

import re

from hypothesis import given
from hypothesis import strategies as st

from ledger import tokens

FORMAT = re.compile(r"tlk_[0-9A-Za-z]{43}[0-9A-Za-z]{6}")


def test_a_value_has_the_prefix_43_random_and_6_checksum_characters():
    value = tokens.generate("tlk")
    assert FORMAT.fullmatch(value)
    assert tokens.is_well_formed(value, "tlk")


def test_values_do_not_repeat():
    assert len({tokens.generate("tlk") for _ in range(1000)}) == 1000


def test_the_prefix_is_configurable():
    value = tokens.generate("acme")
    assert value.startswith("acme_")
    assert tokens.is_well_formed(value, "acme")
    assert not tokens.is_well_formed(value, "tlk")


@given(st.integers(min_value=0, max_value=52), st.sampled_from(tokens.ALPHABET))
def test_any_single_character_change_is_caught_by_the_checksum(position, replacement):
    value = tokens.generate("tlk")
    index = len("tlk_") + position
    mistyped = value[:index] + replacement + value[index + 1 :]
    assert tokens.is_well_formed(mistyped, "tlk") == (mistyped == value)


def test_truncated_padded_and_foreign_values_are_refused():
    value = tokens.generate("tlk")
    for bad in (
        value[:-1],
        value + "0",
        value.replace("tlk_", "tlk-"),
        "",
        "Bearer " + value,
        value[:-6] + "!!!!!!",
        value.upper(),
        value + "\n",
        value[:10] + "\u0663" + value[11:],  # a digit, but not an ASCII one
    ):
        assert not tokens.is_well_formed(bad, "tlk"), bad


@given(st.text(max_size=80))
def test_arbitrary_text_is_never_well_formed(text):
    assert not tokens.is_well_formed(text, "tlk")


def test_the_digest_is_sha256_hex_and_not_the_value():
    value = tokens.generate("tlk")
    digest = tokens.digest(value)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert value not in digest
