"""The REST API's shapes, declared once: the request bodies and queries the relay checks and
the answers it gives. Request validation (relay/web/validation.py) and the
OpenAPI document (relay/web/openapi.py) are both made from these models. The only module that
imports pydantic (tests/test_layers.py).

Why pydantic (v2) and not msgspec: its validation errors are structured (the error's type, its
location, its context, all of them at once), so each refusal maps to the exact message the API
has always answered, in the order the fields were always checked; msgspec reports one error as
a sentence. msgspec is faster (a create body in 0.65 us against 1.4 us; the hand-written
checks took 1.8 us) and lighter to import, which does not matter on the control plane. The
figures are in docs/api.md ("How the API's shapes are declared").

Field names and shapes are Huawei IoTDA v5's (and AWS's names on aws tunnels): never rename
a field here. The answers are still built as dicts by the handlers (no validation of what the
relay writes itself); tests/web/test_models.py checks real answers against these models.

A refusal's message is declared next to its field, as a `Refusal` in the field's `Annotated`
metadata (pydantic ignores metadata it does not know): one message per pydantic error type,
with `{where}` (the field, or `services[1]` for an item) and the error's context to fill in.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, models_json_schema
from pydantic_core import CoreSchema, ErrorDetails, PydanticCustomError, core_schema

from relay import errors
from relay.audit import DEFAULT_LIMIT, EVENT_TYPES, MAX_LIMIT, Marker, parse_time
from relay.audit import TIME_PATTERN as AUDIT_TIME_PATTERN

MAX_DESCRIPTION = 1024
MAX_CUSTOM_INFO = 4096
MAX_BATCH = 100
# AWS service ids (DestinationConfig.services of AWS's OpenTunnel): 1-3 per tunnel, each 1-128
# characters of letters, digits, ':', '_' and '-'.
MAX_SERVICES = 3

# Patterns are JSON Schema's (ECMA) and pydantic's Rust regex alike; in both `$` is the very end
# of the text (Python's `\Z`), so an id with a trailing newline is refused.
DEVICE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"      # relay.config.DEVICE_ID_RE, tests/web/test_models.py
SERVICE_ID_PATTERN = r"^[A-Za-z0-9:_-]{1,128}$"
TUNNEL_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
TIME_PATTERN = r"^\d{8}T\d{6}Z$"
URI_PATTERN = "^wss?://"


class Refusal:
    """The messages for one field's errors, by pydantic error type; `item` for any other error
    of an item of a list, `default` for any other error of the field. Templates name `{where}`,
    `{input}` (the refused value, cut to 64 characters) and the error's context
    (`{max_length}`, ...)."""

    def __init__(self, default: str, item: str | None = None, **by_type: str) -> None:
        self.default = default
        self.item = item
        self.by_type = by_type

    def message(self, error: ErrorDetails, where: str) -> str:
        template = self.by_type.get(error["type"])
        if template is None:
            of_an_item = any(isinstance(part, int) for part in error["loc"])
            template = self.item if self.item is not None and of_an_item else self.default
        value = error.get("input")
        return template.format(where=where, input=value[:64] if isinstance(value, str) else value,
                               **error.get("ctx", {}))


def _where(loc: Sequence[int | str]) -> str:
    """('services', 1) -> 'services[1]'."""
    text = str(loc[0]) if loc else "body"
    return text + "".join(f"[{part}]" for part in loc[1:] if isinstance(part, int))


class UniqueItems:
    """A list without repeats: checked after the list's items, and `uniqueItems` in the schema.
    Refused as the error type 'duplicates'."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        def check(value: list[Any]) -> list[Any]:
            if len(set(value)) != len(value):
                raise PydanticCustomError("duplicates", "the list repeats an item")
            return value
        return core_schema.no_info_after_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        found = handler(schema)
        found["uniqueItems"] = True
        return found


def _tunnel_id(value: str) -> str:
    """A tunnel id as the relay writes it: a lower-case UUID with dashes. Two refusals, so the
    caller learns which: 'tunnel_id_form' (not a UUID at all) and 'tunnel_id_case'."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise PydanticCustomError("tunnel_id_form", "not a UUID") from None
    if str(parsed) != value:
        raise PydanticCustomError("tunnel_id_case", "not a lower-case UUID with dashes")
    return value


def _whole_seconds(value: Any) -> Any:
    """60.0 is an integer in JSON (a client may write it so); 60.5 is not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# The messages of a tunnel id, wherever one is checked (paths, queries, batch bodies).
TUNNEL_ID_MESSAGES = {
    "string_type": "{where} must be a string",
    "tunnel_id_form": "{where} {input!r} is not a tunnel id (a UUID)",
    "tunnel_id_case": "{where} must be a lower-case UUID with dashes",
}
DEVICE_ID_MESSAGE = "{where} must be 1-128 characters of letters, digits, '_' and '-'"

UuidText = Annotated[str, Field(json_schema_extra={"format": "uuid", "pattern": TUNNEL_ID_PATTERN})]
TunnelId = Annotated[UuidText, AfterValidator(_tunnel_id)]
DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN, min_length=1, max_length=128)]
ServiceId = Annotated[str, Field(pattern=SERVICE_ID_PATTERN, min_length=1, max_length=128)]
Services = Annotated[list[ServiceId], Field(min_length=1, max_length=MAX_SERVICES), UniqueItems()]
Time = Annotated[str, Field(pattern=TIME_PATTERN)]
MaybeTime = Annotated[Time | None, Field(description="UTC, yyyyMMdd'T'HHmmss'Z'")]
Protocol = Literal["huawei", "aws"]
PROTOCOL_DESCRIPTION = ("The data-plane protocol: Huawei IoTDA v5 (docs/protocol.md) or AWS IoT Secure "
                        "Tunneling (docs/aws.md).")


def _left_out(schema: dict[str, Any]) -> None:
    """For an answer's field that is left out rather than sent as null: the schema says the
    field's own type (not "or null") and no default."""
    schema.pop("default", None)
    choices = schema.pop("anyOf", None)
    if choices is not None:
        schema.update(next(c for c in choices if c != {"type": "null"}))


def Sometimes(description: str | None = None) -> Any:   # capitalised: it reads as a field's kind
    """A field some answers carry and others leave out (never null)."""
    return Field(None, description=description, json_schema_extra=_left_out)


class Request(BaseModel):
    """A request body: exact JSON types (no "60" for 60), no unknown field."""

    model_config = ConfigDict(strict=True, extra="forbid")
    unknown: ClassVar[str] = "unknown field(s) {unknown}; allowed: {allowed}"
    # Fields whose refusal goes before the others' (which go in the order they are declared).
    checked_first: ClassVar[tuple[str, ...]] = ()


class Query(Request):
    """A request's query parameters (strings; a number is checked as digits, then converted).
    A parameter given more than once comes as a list, and is refused as such where a query
    takes repeats apart (the audit API's); the tunnel list takes the last one."""

    unknown: ClassVar[str] = "unknown query parameter(s) {unknown}"
    repeated: ClassVar[str] = "{where} is given more than once"
    unknown_cut: ClassVar[int | None] = None   # unknown names are cut to this many characters
    # Fields whose repeats are refused before any value is checked.
    repeats_first: ClassVar[tuple[str, ...]] = ()


def _whole_number(value: Any) -> Any:
    """A number of a query: 1 to 9 digits, and nothing else (no sign, no space)."""
    if isinstance(value, str):
        if not re.fullmatch(r"\d{1,9}", value):
            raise PydanticCustomError("whole_number", "not a whole number")
        return int(value)
    return value


def _ascii_whole_number(value: Any) -> Any:
    """As _whole_number, of the ASCII digits only (the audit API's queries)."""
    if isinstance(value, str):
        if not re.fullmatch(r"[0-9]{1,9}", value):
            raise PydanticCustomError("whole_number", "not a whole number")
        return int(value)
    return value


class Answer(BaseModel):
    """An answer's shape, for the OpenAPI document (the handlers write answers as dicts)."""


# -- requests ----------------------------------------------------------------------------------


class CreateTunnelRequest(Request):
    """A tunnel to a device (POST /v5/iot/{project_id}/tunnels)."""

    # expires_in's bounds are the relay's settings: the validation context names them
    # ({"lifetimes": (minimum, maximum)}), and openapi.py writes them into the document.

    # A missing device_id is refused first, then protocol, as the other fields' rules depend on it.
    checked_first: ClassVar[tuple[str, ...]] = ("protocol",)

    model_config = ConfigDict(json_schema_extra={
        # services: required (a list) for aws, absent or null for huawei.
        "if": {"required": ["protocol"], "properties": {"protocol": {"const": "aws"}}},
        "then": {"required": ["services"],
                 "properties": {"services": {"type": "array"}, "record_session": {"enum": [False, None]}}},
        "else": {"properties": {"services": {"type": "null"}}},
    })

    device_id: Annotated[DeviceId, Refusal(DEVICE_ID_MESSAGE, missing="device_id is required")]
    description: Annotated[Annotated[str, Field(max_length=MAX_DESCRIPTION)] | None, Refusal(
        "description must be a string", string_too_long="description must be at most {max_length} characters")] = None
    custom_info: Annotated[Annotated[str, Field(max_length=MAX_CUSTOM_INFO)] | None, Refusal(
        "custom_info must be a string", string_too_long="custom_info must be at most {max_length} characters")] = Field(
        None, description="Sent to the device with the tunnel notify.")
    expires_in: Annotated[int | None, BeforeValidator(_whole_seconds), Refusal(
        "expires_in must be an integer number of seconds",
        lifetime="expires_in must be between {minimum} and {maximum} seconds")] = Field(
        None, description="Lifetime in seconds (default and maximum: the relay's default lifetime).")
    # before services and record_session, whose rules read it (info.data)
    protocol: Annotated[Protocol | None, Refusal("protocol must be 'huawei' (the default) or 'aws'")] = Field(
        None, description="huawei (the default) or aws. " + PROTOCOL_DESCRIPTION)
    services: Annotated[Services | None, Refusal(
        f"services must be a list of 1 to {MAX_SERVICES} service ids",
        item="{where} must be 1-128 characters of letters, digits, ':', '_' and '-'",
        duplicates="services lists a service id more than once",
        not_for_huawei="services is only for tunnels of protocol 'aws'; a Huawei tunnel carries the ssh and tcp services",
        required_for_aws="services is required for protocol 'aws': a list of 1 to 3 service ids, such as [\"SSH\"]",
    )] = Field(None, validate_default=True,
               description="Required for protocol aws (1-3 AWS service ids); refused for huawei.")
    record_session: Annotated[bool | None, Refusal(
        "record_session must be true or false",
        not_for_aws="record_session is for huawei tunnels: the relay records the ssh service's terminal, and an aws "
                    "tunnel carries raw TCP it cannot read")] = Field(
        None, description="Record this tunnel's ssh sessions (huawei tunnels; docs/audit.md). "
                          "Projects named in --record-projects are always recorded.")

    @field_validator("expires_in")
    @classmethod
    def _within_lifetimes(cls, value: int | None, info: ValidationInfo) -> int | None:
        minimum, maximum = (info.context or {})["lifetimes"]
        if value is not None and not minimum <= value <= maximum:
            raise PydanticCustomError("lifetime", "out of range", {"minimum": minimum, "maximum": maximum})
        return value

    @field_validator("services", mode="wrap")
    @classmethod
    def _services_of_the_protocol(cls, value: Any, handler: ValidatorFunctionWrapHandler,
                                  info: ValidationInfo) -> list[str] | None:
        aws = info.data.get("protocol") == "aws"
        if not aws:
            if value is not None:
                raise PydanticCustomError("not_for_huawei", "services is only for aws tunnels")
            return None
        if value is None:
            raise PydanticCustomError("required_for_aws", "services is required for aws tunnels")
        checked: list[str] = handler(value)
        return checked

    @field_validator("record_session")
    @classmethod
    def _recorded_only_huawei(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        if value and info.data.get("protocol") == "aws":
            raise PydanticCustomError("not_for_aws", "record_session is for huawei tunnels")
        return value


class BatchRequest(Request):
    """The tunnels to close or delete (POST .../tunnels/batch-close, batch-delete)."""

    tunnel_ids: Annotated[list[TunnelId], Field(min_length=1, max_length=MAX_BATCH), UniqueItems(), Refusal(
        "tunnel_ids must be a non-empty list of tunnel ids", too_long="tunnel_ids may hold at most {max_length} ids",
        duplicates="tunnel_ids lists a tunnel more than once", **TUNNEL_ID_MESSAGES)]


class RotateRequest(Request):
    """Which tokens to replace (POST .../tunnels/{tunnel_id}/rotate-token; no body: both)."""

    side: Annotated[Literal["source", "device", "all"], Refusal("side must be one of 'source', 'device', 'all'")] = "all"


MAX_LIST_LIMIT = 50
MAX_OFFSET = 100_000


class ListTunnelsQuery(Query):
    """GET /v5/iot/{project_id}/tunnels?device_id=&status=&tunnel_id=&limit=&marker=&offset="""

    checked_first: ClassVar[tuple[str, ...]] = ("status", "marker")

    device_id: Annotated[DeviceId | None, Refusal(DEVICE_ID_MESSAGE)] = None
    status: Annotated[Literal["OPEN", "CLOSED"] | None, Refusal("status must be OPEN or CLOSED")] = None
    tunnel_id: Annotated[TunnelId | None, Refusal("{where} must be a string", **TUNNEL_ID_MESSAGES)] = None
    limit: Annotated[int, Field(ge=1, le=MAX_LIST_LIMIT), BeforeValidator(_whole_number), Refusal(
        f"limit must be between 1 and {MAX_LIST_LIMIT}", whole_number="limit must be a whole number")] = 10
    marker: Annotated[Annotated[str, Field(pattern=r"^\d{1,18}$")] | None, Refusal(
        "marker must be the page.marker of a previous answer")] = None
    offset: Annotated[int, Field(ge=0, le=MAX_OFFSET), BeforeValidator(_whole_number), Refusal(
        f"offset must be between 0 and {MAX_OFFSET}", whole_number="offset must be a whole number")] = 0


# The audit trail's and the recordings' queries (relay/web/audit_rest.py, docs/audit.md).
MAX_RECORDING_LIMIT = 100
MARKER_MAX = 120   # characters; a real marker is about 60
_EVENT_NAMES = "|".join(sorted(EVENT_TYPES))


def _event_types(value: str) -> str:
    for name in value.split(","):
        if name not in EVENT_TYPES:
            raise PydanticCustomError("event_type", "not an audit event type", {"name": name[:40]})
    return value


def _utc_time(value: str) -> str:
    try:
        parse_time(value)
    except (ValueError, OverflowError):
        raise PydanticCustomError("time", "not a UTC time") from None
    return value


def _marker(value: str) -> str:
    try:
        if len(value) > MARKER_MAX:
            raise ValueError
        Marker.decode(value)
    except ValueError:
        raise PydanticCustomError("marker", "not a marker") from None
    return value


QueryTime = Annotated[str, AfterValidator(_utc_time), Field(json_schema_extra={"pattern": AUDIT_TIME_PATTERN})]
PageMarker = Annotated[str, AfterValidator(_marker), Field(
    json_schema_extra={"pattern": r"^\d{1,20}(\.\d{1,20})?(e[+-]?\d{1,2})?_[0-9A-Za-z-]{1,64}$"},
    description="The marker of the previous answer: the next page starts after it.")]
MARKER_REFUSAL = Refusal("marker must be the marker of a previous answer")
TIME_REFUSAL = Refusal("{where} must be a UTC time like 20261124T161807Z or 2026-11-24T16:18:07Z")


class AuditQueryBase(Query):
    """The audit API's queries: a parameter at most once (event_type may repeat: its values add
    up), unknown names cut in the refusal."""

    unknown: ClassVar[str] = "unknown query parameter(s) {unknown}; allowed: {allowed}"
    unknown_cut: ClassVar[int | None] = 40
    repeats_first: ClassVar[tuple[str, ...]] = ("device_id", "tunnel_id")   # the filters are read together


class NoQuery(AuditQueryBase):
    """A path that takes no query parameter (GET .../recordings/{session_id})."""


class FilteredQuery(AuditQueryBase):
    device_id: Annotated[DeviceId | None, Refusal(DEVICE_ID_MESSAGE)] = None
    tunnel_id: Annotated[TunnelId | None, Refusal("{where} must be a string", **TUNNEL_ID_MESSAGES)] = None


class AuditEventsQuery(FilteredQuery):
    """GET /v5/iot/{project_id}/audit (event_type's repeats are joined with ',' before)."""

    event_type: Annotated[Annotated[str, AfterValidator(_event_types), Field(
        json_schema_extra={"pattern": f"^({_EVENT_NAMES})(,({_EVENT_NAMES}))*$"})] | None, Refusal(
        "event_type {name!r} is not an audit event type; known: " + ", ".join(sorted(EVENT_TYPES))), Field(
        description="Event types, separated by commas.")] = None
    since: Annotated[QueryTime | None, TIME_REFUSAL, Field(
        description="Events at or after this time (UTC: 20261124T161807Z, or 2026-11-24T16:18:07[.123]Z).")] = None
    until: Annotated[QueryTime | None, TIME_REFUSAL, Field(
        description="Events before this time (UTC, as since).")] = None
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT), BeforeValidator(_ascii_whole_number), Refusal(
        f"limit must be between 1 and {MAX_LIMIT}", whole_number="limit must be a whole number")] = DEFAULT_LIMIT
    marker: Annotated[PageMarker | None, MARKER_REFUSAL] = None


class RecordingsQuery(FilteredQuery):
    """GET /v5/iot/{project_id}/recordings"""

    limit: Annotated[int, Field(ge=1, le=MAX_RECORDING_LIMIT), BeforeValidator(_ascii_whole_number), Refusal(
        f"limit must be between 1 and {MAX_RECORDING_LIMIT}", whole_number="limit must be a whole number")] = DEFAULT_LIMIT
    marker: Annotated[PageMarker | None, MARKER_REFUSAL] = None


# -- answers -----------------------------------------------------------------------------------


class Error(Answer):
    """Every error's body (docs/api.md, relay/errors.py)."""

    error_code: str
    error_msg: str


class ConnectState(Answer):
    status: Literal["CONNECTED", "DISCONNECTED"]
    last_update_time: MaybeTime


class TunnelInfo(Answer):
    """A tunnel as the API shows it (never its tokens)."""

    # written by relay.model.Tunnel.info

    tunnel_id: UuidText
    device_id: str
    status: Literal["OPEN", "CLOSED"]
    create_time: MaybeTime
    closed_time: MaybeTime
    expires_at: MaybeTime
    close_reason: Literal["closed", "expired"] | None = None
    description: str | None = None
    custom_info: str | None = None
    source_connect_state: ConnectState
    device_connect_state: ConnectState
    notify_status: Literal["PENDING", "DELIVERED"] | None = Field(
        None, description="The MQTT tunnel notify to the device: PENDING (waiting in the outbox for the broker), "
                          "DELIVERED (acknowledged by the broker), null (none: no broker, or the tunnel closed "
                          "before delivery).")
    protocol: Protocol = Field("huawei", description=PROTOCOL_DESCRIPTION)
    services: Services | None = Field(None, description="The AWS service ids of an aws tunnel; null for a huawei tunnel.")
    record_session: bool = Field(False, description="Whether this tunnel's ssh sessions are recorded (docs/audit.md).")


class CreateTunnelResponse(Answer):
    tunnel_id: UuidText
    tunnel_access_token: str = Field(description="The source (application) token.")
    expires_in: int
    tunnel_uri: Annotated[str, Field(pattern=URI_PATTERN)]
    device_access_token: str | None = Sometimes("The device token (unless the relay hides it).")
    device_tunnel_uri: Annotated[str, Field(pattern=URI_PATTERN)] | None = Sometimes()
    protocol: Protocol | None = Sometimes(PROTOCOL_DESCRIPTION)
    services: Services | None = Sometimes("AWS service ids (DestinationConfig.services), announced to both ends in SERVICE_IDS.")
    source_access_token: str | None = Sometimes("aws tunnels: the source token (AWS's name).")
    destination_access_token: str | None = Sometimes("aws tunnels: the destination (device) token, unless hidden.")


class Page(Answer):
    count: int = Field(ge=0)
    marker: str | None


class TunnelList(Answer):
    tunnels: list[TunnelInfo]
    page: Page


class BatchResult(Answer):
    tunnel_id: str
    result: Literal["SUCCESS", "FAILED"]
    error_code: str | None = Sometimes()
    error_msg: str | None = Sometimes()


class BatchResponse(Answer):
    results: list[BatchResult]
    success_count: int
    failure_count: int


class RotateResponse(Answer):
    tunnel_id: UuidText
    expires_in: int
    tunnel_access_token: str | None = Sometimes()
    device_access_token: str | None = Sometimes()
    source_access_token: str | None = Sometimes("aws tunnels: the source token (AWS's name).")
    destination_access_token: str | None = Sometimes("aws tunnels: the destination (device) token, unless hidden.")


# -- the audit trail and session recordings (docs/audit.md, relay/web/audit_rest.py) ----------


class AuditEvent(Answer):
    """One event of the audit trail (relay.audit.AuditEvent.to_json)."""

    event_id: str
    time: Time
    timestamp: float = Field(description="The same time in seconds since the epoch, to the microsecond.")
    event: Annotated[str, Field(json_schema_extra={"enum": sorted(EVENT_TYPES)})]
    actor: str = Field(description="The NAME of the API token that acted (for what a source connection does: the "
                                   "one that issued its source token), or source, device, relay.")
    tunnel_id: str | None
    device_id: str | None
    outcome: str = Field(description="ok, or an error code or short word.")
    detail: dict[str, Any]


class AuditPage(Answer):
    events: list[AuditEvent]
    count: int = Field(ge=0, description="Events in this page.")
    marker: str | None = Field(description="For the next page; null: this is the last one.")


class RecordingInfo(Answer):
    """A session recording, without its data."""

    session_id: str
    tunnel_id: str
    device_id: str
    username: str | None
    started: Time
    ended: Time
    duration: float = Field(ge=0)
    truncated: bool
    size: int = Field(ge=0)


class RecordingList(Answer):
    recordings: list[RecordingInfo]
    count: int = Field(ge=0)
    marker: str | None


# -- from pydantic's errors to the API's ----------------------------------------------------------

RequestT = TypeVar("RequestT", bound=Request)


def parse(model: type[RequestT], body: Any, context: dict[str, Any] | None = None) -> RequestT:
    """The checked request, or errors.InvalidParameter with the message the API has always given
    for the first refusal, in the order the fields have always been checked: the body's kind,
    unknown fields (all of them named), a missing field, then field by field."""
    try:
        return model.model_validate(body, context=context)
    except ValidationError as exc:
        raise errors.InvalidParameter(refusal(model, exc.errors(include_url=False))) from None


def refusal(model: type[BaseModel], found: Iterable[ErrorDetails]) -> str:
    found = list(found)
    if any(e["type"] == "model_type" for e in found):
        return "the request body must be a JSON object"
    unknown = sorted(str(e["loc"][0]) for e in found if e["type"] == "extra_forbidden")
    if unknown:
        template = model.unknown if issubclass(model, Request) else Request.unknown
        cut = model.unknown_cut if issubclass(model, Query) else None
        return template.format(unknown=", ".join(u[:cut] for u in unknown), allowed=", ".join(sorted(model.model_fields)))
    first_fields = model.checked_first if issubclass(model, Request) else ()
    repeats_first = model.repeats_first if issubclass(model, Query) else ()

    def repeated(error: ErrorDetails) -> bool:
        return issubclass(model, Query) and len(error["loc"]) == 1 and isinstance(error.get("input"), list)

    def rank(error: ErrorDetails) -> tuple[bool, bool, bool]:
        field = error["loc"][0]
        return (error["type"] != "missing", not (repeated(error) and field in repeats_first),
                field not in first_fields)
    first = min(found, key=rank)   # min keeps pydantic's order (the fields') among equals
    field = model.model_fields[str(first["loc"][0])]
    if repeated(first) and issubclass(model, Query):
        return model.repeated.format(where=_where(first["loc"]))
    said = next(m for m in field.metadata if isinstance(m, Refusal))
    return said.message(first, _where(first["loc"]))


_TUNNEL_ID = TypeAdapter(TunnelId)
_TUNNEL_ID_REFUSAL = Refusal("{where} must be a string", **TUNNEL_ID_MESSAGES)


def tunnel_id(value: Any, where: str = "tunnel_id") -> str:
    """A tunnel id of a path or a query, checked as in a body."""
    try:
        checked: str = _TUNNEL_ID.validate_python(value, strict=True)
    except ValidationError as exc:
        raise errors.InvalidParameter(_TUNNEL_ID_REFUSAL.message(exc.errors(include_url=False)[0], where)) from None
    return checked


# -- the OpenAPI document's schemas -------------------------------------------------------------

REQUESTS: tuple[type[Request], ...] = (CreateTunnelRequest, BatchRequest, RotateRequest)
ANSWERS: tuple[type[Answer], ...] = (Error, TunnelInfo, CreateTunnelResponse, TunnelList, BatchResponse, RotateResponse,
                                     AuditPage, RecordingList)


class _Schema(GenerateJsonSchema):
    """JSON Schema 2020-12 (OpenAPI 3.1) as pydantic writes it, without a title per field (the
    field's name says it)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def component_schemas(models: Iterable[type[BaseModel]]) -> dict[str, Any]:
    """components.schemas of the OpenAPI document: each model by its class name, and the
    models they hold (ConnectState, Page, BatchResult), all referred to as
    #/components/schemas/NAME."""
    _, found = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}",
                                  schema_generator=_Schema)
    schemas: dict[str, Any] = found.get("$defs", {})
    return schemas


def schema_of(kind: Any) -> dict[str, Any]:
    """The JSON Schema of one type of this module (a path's or a query's parameter)."""
    found: dict[str, Any] = TypeAdapter(kind).json_schema(schema_generator=_Schema)
    return found


def query_parameters(model: type[Query]) -> list[dict[str, Any]]:
    """The OpenAPI parameters of a query model: one per field, none required, without the
    null that stands for "not given"."""
    properties = component_schemas([model])[model.__name__]["properties"]
    found = []
    for name, schema in properties.items():
        if schema.get("default", ...) is None:
            _left_out(schema)
        found.append({"name": name, "in": "query", "schema": schema})
    return found


def with_schema(model: type[BaseModel]) -> Callable[[str], dict[str, Any]]:
    """A media type whose schema is the model's."""
    return lambda media: {media: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
