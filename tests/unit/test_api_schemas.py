"""The hand-written parts of the wire format hold to what marshmallow and Flask would write."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import marshmallow as ma
import pytest
from flask import Flask

from api.http import JsonProvider
from api.schemas import (
    CurrentPersonSchema,
    IssuedTokenSchema,
    PeopleListSchema,
    PersonSchema,
    PlainDump,
    TokenInfoSchema,
    TokenListSchema,
)
from ledger.timestamps import timestamp

CREATED = datetime(2026, 11, 23, 10, 15, 30, 123456, tzinfo=UTC)
INFOS = [
    {
        "token_id": uuid.uuid4(),
        "description": "ci",
        "created_at": CREATED,
        "expires_at": CREATED + timedelta(days=30),
        "last_used": CREATED + timedelta(seconds=1),
        "status": "active",
    },
    {  # never expires, never used, and the ledger's extra keys, which are not on the wire
        "token_id": uuid.uuid4(),
        "owner_id": uuid.uuid4(),
        "token_hash": "00" * 32,
        "description": "ünïcode \u2028",
        "created_at": CREATED.astimezone(timezone(timedelta(hours=-5))),
        "expires_at": None,
        "last_used": None,
        "status": "expired",
    },
]


def marshmallows(schema: ma.Schema, obj: object, many: bool | None = None) -> object:
    return ma.Schema.dump(schema, obj, many=many)


@pytest.mark.parametrize("info", INFOS)
def test_a_token_info_is_dumped_as_its_fields_would_dump_it(info):
    assert TokenInfoSchema().dump(info) == marshmallows(TokenInfoSchema(), info)
    assert TokenInfoSchema().dump(info)["createdAt"] == "2026-11-23T10:15:30.123Z"


@pytest.mark.parametrize("info", INFOS)
def test_a_token_info_with_ids_and_times_as_text_is_dumped_as_the_typed_one(info):
    """The read model's listing hands them over as the wire writes them."""
    as_text = {
        **info,
        "token_id": str(info["token_id"]),
        **{k: timestamp(info[k]) for k in ("created_at", "expires_at", "last_used") if info[k]},
    }
    assert TokenInfoSchema().dump(as_text) == TokenInfoSchema().dump(info)


def test_pages_and_issued_tokens_nest_the_same_token_info():
    page = {"data": INFOS, "count": 7}
    assert TokenListSchema().dump(page) == {
        "data": [marshmallows(TokenInfoSchema(), info) for info in INFOS],
        "count": 7,
    }
    assert TokenInfoSchema(many=True).dump(INFOS) == marshmallows(TokenInfoSchema(), INFOS, True)
    issued = {"token_value": "tlk_x", "token_info": INFOS[0]}
    assert IssuedTokenSchema().dump(issued)["tokenInfo"] == marshmallows(
        TokenInfoSchema(), INFOS[0]
    )


PEOPLE = [
    {  # a person as the ledger returns one, with a key that is not on the wire
        "id": uuid.uuid4(),
        "username": "ada",
        "role": "admin",
        "disabled": False,
        "can_generate_tokens": True,
        "workspace_id": uuid.uuid4(),
        "password_hash": "not on the wire",
    },
    {  # the current person with Bearer
        "id": uuid.uuid4(),
        "username": "max",
        "role": "member",
        "disabled": True,
        "can_generate_tokens": False,
        "workspace_id": uuid.uuid4(),
        "auth_method": "token",
        "token_id": uuid.uuid4(),
    },
]


@pytest.mark.parametrize("person", PEOPLE)
def test_people_are_dumped_as_their_fields_would_dump_them(person):
    with_password = {**person, "auth_method": "password"}
    without_token = {k: v for k, v in with_password.items() if k != "token_id"}
    for schema, obj in (
        (PersonSchema(), person),
        (CurrentPersonSchema(), person),
        (CurrentPersonSchema(), without_token),  # Basic: no tokenId at all, not a null
    ):
        assert schema.dump(obj) == marshmallows(schema, obj)
    assert "tokenId" not in CurrentPersonSchema().dump(without_token)
    page = {"data": PEOPLE, "count": 2}
    assert PeopleListSchema().dump(page) == {
        "data": [marshmallows(PersonSchema(), p) for p in PEOPLE],
        "count": 2,
    }


def test_a_plain_dump_takes_plain_fields_only():
    class Nesting(PlainDump):
        inner = ma.fields.Nested(PersonSchema)

    with pytest.raises(TypeError, match=r"Nesting\.inner is not a plain field"):
        Nesting()


@pytest.mark.parametrize(
    "body",
    [
        {"b": 1, "a": [None, True, 1.5, "ü"], "id": uuid.UUID(int=7)},
        {"exception": {"details": {"json": {0: ["Not a valid string."]}}}},  # webargs' indexes
        {"when": CREATED},
    ],
)
def test_json_responses_say_what_flasks_own_provider_says(body):
    app = Flask(__name__)
    with app.app_context():
        flasks = json.loads(app.json.response(body).get_data())
        app.json = JsonProvider(app)
        ours = app.json.response(body)
    assert ours.mimetype == "application/json"
    assert json.loads(ours.get_data()) == flasks
    assert list(json.loads(ours.get_data())) == list(flasks)  # keys sorted, as Flask sorts them
    assert ours.get_data().endswith(b"}\n") and b": " not in ours.get_data()  # compact
