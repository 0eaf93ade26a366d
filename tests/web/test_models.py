"""The REST API's shapes (relay/web/models.py): the bodies it takes, with the exact messages of
its refusals, and the OpenAPI document made from the same models. No sockets, but for the
test that checks real answers against the models."""

from __future__ import annotations

import re
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from multidict import MultiDict, MultiDictProxy

from relay import config, errors
from relay.audit import EVENT_TYPES, AuditQuery, EventType, Marker, parse_time
from relay.config import Settings
from relay.model import ListQuery, Side, Status, TunnelProtocol
from relay.web import audit_rest, models, openapi, validation

U = str(uuid.UUID(int=5))
V = str(uuid.UUID(int=6))
ALLOWED = "custom_info, description, device_id, expires_in, protocol, record_session, services"
AWS = {"device_id": "d", "protocol": "aws"}


def refused(check, *args: Any) -> str:
    with pytest.raises(errors.InvalidParameter) as caught:
        check(*args)
    return caught.value.message


# The messages the API has always answered (the hand-written checks of relay/web/validation.py
# gave these, word for word), and the order in which a body's fields are checked: the body's
# kind, unknown fields, a missing field, protocol, then the others in their order.
@pytest.mark.parametrize("body, message", [
    ([1, 2], "the request body must be a JSON object"),
    (None, "the request body must be a JSON object"),
    ({"device_id": "d", "colour": "red", "Age": 3, "expires_in": "x"}, f"unknown field(s) Age, colour; allowed: {ALLOWED}"),
    ({"protocol": "ssh"}, "device_id is required"),
    ({"device_id": 42, "protocol": "ssh"}, "protocol must be 'huawei' (the default) or 'aws'"),
    ({"device_id": 42}, "device_id must be 1-128 characters of letters, digits, '_' and '-'"),
    ({"device_id": "dev-1\n"}, "device_id must be 1-128 characters of letters, digits, '_' and '-'"),
    ({"device_id": "a" * 129}, "device_id must be 1-128 characters of letters, digits, '_' and '-'"),
    ({"device_id": "d", "description": 3}, "description must be a string"),
    ({"device_id": "d", "description": "x" * 1025}, "description must be at most 1024 characters"),
    ({"device_id": "d", "custom_info": {"a": 1}}, "custom_info must be a string"),
    ({"device_id": "d", "custom_info": "x" * 4097}, "custom_info must be at most 4096 characters"),
    ({"device_id": "d", "expires_in": 59}, "expires_in must be between 60 and 86400 seconds"),
    ({"device_id": "d", "expires_in": 86401.0}, "expires_in must be between 60 and 86400 seconds"),
    ({"device_id": "d", "expires_in": 60.5}, "expires_in must be an integer number of seconds"),
    ({"device_id": "d", "expires_in": True}, "expires_in must be an integer number of seconds"),
    ({"device_id": "d", "expires_in": "60"}, "expires_in must be an integer number of seconds"),
    ({"device_id": "d", "services": ["SSH"]},
     "services is only for tunnels of protocol 'aws'; a Huawei tunnel carries the ssh and tcp services"),
    ({"device_id": "d", "services": "SSH"},
     "services is only for tunnels of protocol 'aws'; a Huawei tunnel carries the ssh and tcp services"),
    (AWS, 'services is required for protocol \'aws\': a list of 1 to 3 service ids, such as ["SSH"]'),
    ({**AWS, "services": []}, "services must be a list of 1 to 3 service ids"),
    ({**AWS, "services": "SSH"}, "services must be a list of 1 to 3 service ids"),
    ({**AWS, "services": ["a", "b", "c", "d"]}, "services must be a list of 1 to 3 service ids"),
    ({**AWS, "services": ["SSH", "b a"]}, "services[1] must be 1-128 characters of letters, digits, ':', '_' and '-'"),
    ({**AWS, "services": ["SSH", 3]}, "services[1] must be 1-128 characters of letters, digits, ':', '_' and '-'"),
    ({**AWS, "services": [""]}, "services[0] must be 1-128 characters of letters, digits, ':', '_' and '-'"),
    ({**AWS, "services": ["SSH", "a" * 129]}, "services[1] must be 1-128 characters of letters, digits, ':', '_' and '-'"),
    ({**AWS, "services": ["SSH", "SSH"]}, "services lists a service id more than once"),
    ({"device_id": "d", "record_session": "yes"}, "record_session must be true or false"),
    ({**AWS, "services": ["SSH"], "record_session": True},
     "record_session is for huawei tunnels: the relay records the ssh service's terminal, and an aws tunnel "
     "carries raw TCP it cannot read"),
    ({"device_id": "d", "description": 1, "expires_in": "x"}, "description must be a string"),
    ({"device_id": "d", "expires_in": 5, "services": ["SSH"]}, "expires_in must be between 60 and 86400 seconds"),
])
def test_create_refusals(body, message):
    assert refused(validation.create_request, body, 60, 86400) == message


@pytest.mark.parametrize("body, fields", [
    ({"device_id": "A-z_0-9" + "x" * 121},
     {"description": None, "custom_info": None, "expires_in": None, "protocol": TunnelProtocol.HUAWEI, "services": (),
      "record_session": False}),
    ({"device_id": "d", "description": "unit 7", "custom_info": "rack=3", "expires_in": 60.0, "protocol": None,
      "services": None, "record_session": True},
     {"description": "unit 7", "custom_info": "rack=3", "expires_in": 60, "protocol": TunnelProtocol.HUAWEI,
      "services": (), "record_session": True}),
    ({**AWS, "services": ["SSH", "RDP"], "record_session": False, "expires_in": 86400},
     {"description": None, "custom_info": None, "expires_in": 86400, "protocol": TunnelProtocol.AWS,
      "services": ("SSH", "RDP"), "record_session": False}),
])
def test_create_accepts(body, fields):
    checked = validation.create_request(body, 60, 86400)
    assert checked == {"device_id": body["device_id"], **fields}
    assert type(checked["expires_in"]) in (int, type(None))


@pytest.mark.parametrize("body, message", [
    ({}, "tunnel_ids must be a non-empty list of tunnel ids"),
    ({"tunnel_ids": None}, "tunnel_ids must be a non-empty list of tunnel ids"),
    ({"tunnel_ids": []}, "tunnel_ids must be a non-empty list of tunnel ids"),
    ({"tunnel_ids": U}, "tunnel_ids must be a non-empty list of tunnel ids"),
    ({"tunnel_ids": ["nope"] + [U] * 100}, "tunnel_ids may hold at most 100 ids"),
    ({"tunnel_ids": [U, "nope"]}, "tunnel_ids[1] 'nope' is not a tunnel id (a UUID)"),
    ({"tunnel_ids": [U, V.replace("-", "")]}, "tunnel_ids[1] must be a lower-case UUID with dashes"),
    ({"tunnel_ids": [U, "D144A524-1997-4B99-94BF-F27128DA8A34"]}, "tunnel_ids[1] must be a lower-case UUID with dashes"),
    ({"tunnel_ids": [U, 7]}, "tunnel_ids[1] must be a string"),
    ({"tunnel_ids": [U, V, U]}, "tunnel_ids lists a tunnel more than once"),
    ({"tunnel_ids": [U], "x": 1}, "unknown field(s) x; allowed: tunnel_ids"),
])
def test_batch_refusals(body, message):
    assert refused(validation.batch_request, body) == message


def test_batch_accepts():
    assert validation.batch_request({"tunnel_ids": [U, V]}) == [U, V]


@pytest.mark.parametrize("body, message", [
    ({"side": "both"}, "side must be one of 'source', 'device', 'all'"),
    ({"side": None}, "side must be one of 'source', 'device', 'all'"),
    ({"side": "all", "x": 1}, "unknown field(s) x; allowed: side"),
    ("all", "the request body must be a JSON object"),
])
def test_rotate_refusals(body, message):
    assert refused(validation.rotate_request, body) == message


def test_rotate_accepts():
    assert validation.rotate_request({}) == {Side.SOURCE, Side.DEVICE}
    assert validation.rotate_request({"side": "device"}) == {Side.DEVICE}


@pytest.mark.parametrize("params, message", [
    ({"colour": "red", "Limit": "5", "status": "x"}, "unknown query parameter(s) Limit, colour"),
    ({"status": "open", "marker": "x"}, "status must be OPEN or CLOSED"),
    ({"marker": "abc", "device_id": "a b"}, "marker must be the page.marker of a previous answer"),
    ({"marker": "1234567890123456789"}, "marker must be the page.marker of a previous answer"),
    ({"device_id": "a b", "tunnel_id": "x"}, "device_id must be 1-128 characters of letters, digits, '_' and '-'"),
    ({"device_id": "dev-1\n"}, "device_id must be 1-128 characters of letters, digits, '_' and '-'"),
    ({"tunnel_id": "nope", "limit": "x"}, "tunnel_id 'nope' is not a tunnel id (a UUID)"),
    ({"limit": "x"}, "limit must be a whole number"),
    ({"limit": "+5"}, "limit must be a whole number"),
    ({"limit": " 5"}, "limit must be a whole number"),
    ({"limit": "1234567890"}, "limit must be a whole number"),
    ({"limit": "0"}, "limit must be between 1 and 50"),
    ({"limit": "51", "offset": "-1"}, "limit must be between 1 and 50"),
    ({"offset": "-1"}, "offset must be a whole number"),
    ({"offset": "100001"}, "offset must be between 0 and 100000"),
])
def test_list_query_refusals(params, message):
    assert refused(validation.list_query, params) == message


def test_list_query_accepts():
    assert validation.list_query({}) == ListQuery()
    assert validation.list_query({"device_id": "dev-1", "status": "CLOSED", "tunnel_id": U, "limit": "50",
                                  "marker": "123456789012345678", "offset": "100000"}) == ListQuery(
        device_id="dev-1", status=Status.CLOSED, tunnel_id=U, limit=50, marker=123456789012345678, offset=100000)


def audit_request(pairs: list[tuple[str, str]]) -> SimpleNamespace:
    return SimpleNamespace(query=MultiDictProxy(MultiDict(pairs)))


AUDIT_ALLOWED = "device_id, event_type, limit, marker, since, tunnel_id, until"


@pytest.mark.parametrize("pairs, message", [
    ([("colour", "red"), ("x" * 60, "1")], f"unknown query parameter(s) colour, {'x' * 40}; allowed: {AUDIT_ALLOWED}"),
    ([("device_id", "a b"), ("tunnel_id", U), ("tunnel_id", V)], "tunnel_id is given more than once"),
    ([("device_id", "a b"), ("since", "x")], "device_id must be 1-128 characters of letters, digits, '_' and '-'"),
    ([("tunnel_id", "nope")], "tunnel_id 'nope' is not a tunnel id (a UUID)"),
    ([("event_type", "tunnel_created"), ("event_type", "batch_close,nope"), ("since", "x")],
     "event_type 'nope' is not an audit event type; known: " + ", ".join(sorted(EVENT_TYPES))),
    ([("since", "20261124T161807")], "since must be a UTC time like 20261124T161807Z or 2026-11-24T16:18:07Z"),
    ([("until", "x"), ("limit", "0")], "until must be a UTC time like 20261124T161807Z or 2026-11-24T16:18:07Z"),
    ([("since", "20261124T161807Z"), ("since", "20261124T161807Z")], "since is given more than once"),
    ([("limit", "\u0663")], "limit must be a whole number"),
    ([("limit", "1001")], "limit must be between 1 and 1000"),
    ([("limit", "5"), ("limit", "6")], "limit is given more than once"),
    ([("marker", "1e5_x" * 30)], "marker must be the marker of a previous answer"),
    ([("marker", "inf_x")], "marker must be the marker of a previous answer"),
])
def test_audit_query_refusals(pairs, message):
    assert refused(audit_rest.audit_query, audit_request(pairs)) == message


def test_audit_query_accepts():
    query = audit_rest.audit_query(audit_request([
        ("device_id", "dev-1"), ("tunnel_id", U), ("event_type", "tunnel_created,batch_close"), ("event_type", "tunnel_closed"),
        ("since", "20261124T161807Z"), ("until", "2026-11-24T16:18:08Z"), ("limit", "1000"), ("marker", "1.5_ev-1")]))
    assert query == AuditQuery(device_id="dev-1", tunnel_id=U, since=parse_time("20261124T161807Z"),
                               until=parse_time("20261124T161808Z"), limit=1000, marker=Marker(1.5, "ev-1"),
                               events=frozenset({EventType.TUNNEL_CREATED, EventType.BATCH_CLOSE, EventType.TUNNEL_CLOSED}))


def test_recording_queries():
    assert refused(audit_rest._query, audit_request([("limit", "101")]), models.RecordingsQuery) == \
        "limit must be between 1 and 100"
    assert refused(audit_rest._query, audit_request([("event_type", "x")]), models.RecordingsQuery) == \
        "unknown query parameter(s) event_type; allowed: device_id, limit, marker, tunnel_id"
    assert refused(audit_rest._query, audit_request([("a", "1")]), models.NoQuery) == \
        "unknown query parameter(s) a; allowed: "
    assert audit_rest._query(audit_request([("limit", "100")]), models.RecordingsQuery).limit == 100


@pytest.mark.parametrize("value, message", [
    (5, "tunnel_id must be a string"),
    ("x" * 100, f"tunnel_id {'x' * 64!r} is not a tunnel id (a UUID)"),
    (U + "\n", f"tunnel_id {U + chr(10)!r} is not a tunnel id (a UUID)"),
    ("{" + U + "}", "tunnel_id must be a lower-case UUID with dashes"),
    ("urn:uuid:" + U, "tunnel_id must be a lower-case UUID with dashes"),
])
def test_tunnel_id_of_a_path(value, message):
    assert refused(validation.tunnel_id, value) == message
    assert validation.tunnel_id(U) == U


@pytest.mark.parametrize("value", ["d", "A-z_0-9", "a" * 128, "", "a" * 129, "dev-1\n", "d\u00e9v", "a b", "x/y", "\nd"])
def test_the_models_device_id_is_the_configs(value):
    """The model's pattern (JSON Schema's and pydantic's) and config.DEVICE_ID_RE (the agent's,
    the broker's, the query's) take the same ids."""
    try:
        models.parse(models.CreateTunnelRequest, {"device_id": value}, context={"lifetimes": (60, 60)})
        taken = True
    except errors.InvalidParameter:
        taken = False
    assert taken is bool(config.DEVICE_ID_RE.match(value))


# -- the OpenAPI document is made from the models -------------------------------------------------

def test_the_documents_schemas_are_the_models():
    doc = openapi.document(Settings())
    schemas = doc["components"]["schemas"]
    for model in models.REQUESTS + models.ANSWERS:
        assert list(schemas[model.__name__]["properties"]) == list(model.model_fields), model
    for model in models.REQUESTS:
        assert schemas[model.__name__]["additionalProperties"] is False
    create = schemas["CreateTunnelRequest"]
    assert create["required"] == ["device_id"]
    assert create["properties"]["device_id"]["pattern"] == models.DEVICE_ID_PATTERN
    assert create["properties"]["services"]["anyOf"][0]["maxItems"] == models.MAX_SERVICES
    assert create["properties"]["services"]["anyOf"][0]["uniqueItems"] is True
    # the lifetimes are the relay's settings
    assert create["properties"]["expires_in"]["anyOf"][0] == {"type": "integer", "minimum": Settings().min_lifetime,
                                                             "maximum": Settings().default_lifetime}
    # the queries' parameters are the query models' fields
    for path, model in (("/v5/iot/{project_id}/audit", models.AuditEventsQuery),
                        ("/v5/iot/{project_id}/recordings", models.RecordingsQuery)):
        assert [p["name"] for p in doc["paths"][path]["get"]["parameters"]] == list(model.model_fields)
    # the tunnel list's query parameters are the query model's fields
    listing = doc["paths"]["/v5/iot/{project_id}/tunnels"]["get"]["parameters"]
    assert [p["name"] for p in listing] == list(models.ListTunnelsQuery.model_fields)
    assert {p["name"]: p["schema"] for p in listing}["limit"] == {"type": "integer", "minimum": 1,
                                                                 "maximum": models.MAX_LIST_LIMIT, "default": 10}
    # every $ref names a schema of the document
    refs = set(re.findall(r"#/components/schemas/(\w+)", str(doc)))
    assert refs and refs <= set(schemas)
    # an answer's field that is left out rather than null says its own type
    assert schemas["CreateTunnelResponse"]["properties"]["device_access_token"] == {
        "type": "string", "description": "The device token (unless the relay hides it)."}


def test_a_field_added_to_a_model_appears_in_the_document():
    class CreateTunnelRequest(models.CreateTunnelRequest):
        colour: str | None = None

    schemas = models.component_schemas([CreateTunnelRequest])
    assert "colour" in schemas["CreateTunnelRequest"]["properties"]
    assert "colour" not in openapi.document(Settings())["components"]["schemas"]["CreateTunnelRequest"]["properties"]
    # and validation takes it too: one declaration for both
    checked = models.parse(CreateTunnelRequest, {"device_id": "d", "colour": "red"}, context={"lifetimes": (60, 60)})
    assert checked.colour == "red"


# -- the answers the relay writes fit the models ---------------------------------------------------

def fits(model: type[models.Answer], body: dict[str, Any]) -> None:
    assert set(body) <= set(model.model_fields), set(body) - set(model.model_fields)
    model.model_validate(body, strict=True)


async def test_real_answers_fit_their_models(relay):
    created = await relay.create("dev-1", description="unit 7")
    fits(models.CreateTunnelResponse, created)
    aws = await relay.create("dev-2", protocol="aws", services=["SSH"])
    fits(models.CreateTunnelResponse, aws)
    status, info = await relay.call("GET", f"/v5/iot/proj-a/tunnels/{created['tunnel_id']}")
    fits(models.TunnelInfo, info)
    status, page = await relay.call("GET", "/v5/iot/proj-a/tunnels")
    fits(models.TunnelList, page)
    status, rotated = await relay.call("POST", f"/v5/iot/proj-a/tunnels/{aws['tunnel_id']}/rotate-token", json={})
    fits(models.RotateResponse, rotated)
    status, batch = await relay.call("POST", "/v5/iot/proj-a/tunnels/batch-close", json={"tunnel_ids": [created["tunnel_id"], U]})
    fits(models.BatchResponse, batch)
    for row in batch["results"]:
        fits(models.BatchResult, row)
    status, body = await relay.call("GET", "/v5/iot/proj-a/tunnels?limit=0")
    assert status == 400
    fits(models.Error, body)
    status, trail = await relay.call("GET", "/v5/iot/proj-a/audit")
    fits(models.AuditPage, trail)
    status, recordings = await relay.call("GET", "/v5/iot/proj-a/recordings")
    fits(models.RecordingList, recordings)
