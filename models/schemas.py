"""The contract's data shapes, shared by the REST API, the workers' events and pushes, and
the realtime gateway: one definition, so every channel sends the same JSON."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Protocol

import redis
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PlainSerializer,
    ValidationError,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from models.accounts import DriverEvent, DriverEventType, DriverProfile, User
from models.job_events import EventType, JobEvent
from models.jobs import Job, JobStatus, Place
from models.offers import Offer
from models.operations import DriverStatus, LiveCounts
from models.tracking import Position, tracked_positions


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def utc_z(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


Latitude = Annotated[float, Field(ge=-90, le=90), AfterValidator(_finite)]
Longitude = Annotated[float, Field(ge=-180, le=180), AfterValidator(_finite)]
UTCTime = Annotated[datetime, PlainSerializer(utc_z, return_type=str)]


# Text without NUL, as a JSON Schema pattern; a field with a pattern of its own excludes NUL
# in it (api.schemas).
NO_NUL_PATTERN = r"^[^\x00]*$"
NUL_REASON = "must not contain NUL characters"


class StrictModel(BaseModel):
    """Request shapes: unknown fields and type coercion are errors, not guesses."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul_characters(cls, value: Any) -> Any:
        """PostgreSQL cannot store NUL in text, and would answer a 500 instead of a 422."""
        if isinstance(value, str) and "\x00" in value:
            raise ValueError(NUL_REASON)
        return value

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """The schema says what `_no_nul_characters` refuses: every free-text property
        gets NO_NUL_PATTERN, so the OpenAPI document admits no request the API refuses."""
        schema = handler.resolve_ref_schema(handler(core_schema))
        for prop in schema.get("properties", {}).values():
            for variant in [prop, *prop.get("anyOf", [])]:
                if variant.get("type") == "string" and not {"pattern", "enum", "const"} & set(
                    variant
                ):
                    variant["pattern"] = NO_NUL_PATTERN
        return schema


class Coordinates(StrictModel):
    lat: Latitude
    lng: Longitude


class PlaceIn(Coordinates):
    address: str | None = Field(default=None, max_length=500)

    def to_place(self) -> Place:
        return Place(self.lat, self.lng, self.address)


class PlaceView(BaseModel):
    lat: float
    lng: float
    address: str | None = None


class PersonView(BaseModel):
    id: int
    name: str


class UserView(BaseModel):
    id: int
    role: str
    email: str
    name: str

    @classmethod
    def of(cls, user: User) -> UserView:
        return cls(id=user.id, role=user.role, email=user.email, name=user.name)


class DriverLocationView(BaseModel):
    lat: float
    lng: float
    at: UTCTime

    @classmethod
    def of(cls, position: Position | None) -> DriverLocationView | None:
        if position is None:
            return None
        return cls(lat=position.lat, lng=position.lng, at=position.at)


class JobView(BaseModel):
    id: int
    status: str = Field(json_schema_extra={"enum": [s.value for s in JobStatus]})
    pickup: PlaceView
    dropoff: PlaceView | None
    notes: str | None
    customer: PersonView
    driver: PersonView | None
    created_at: UTCTime
    accepted_at: UTCTime | None
    expires_at: UTCTime
    arrived_at: UTCTime | None
    started_at: UTCTime | None
    completed_at: UTCTime | None
    cancelled_at: UTCTime | None
    cancelled_by: str | None = Field(json_schema_extra={"enum": ["customer", None]})
    driver_location: DriverLocationView | None

    @classmethod
    def of(cls, job: Job, driver_at: Position | None = None) -> JobView:
        """The job as clients see it; `driver_at` is the assigned driver's last position,
        shown only while the driver is working on it (`models.tracking.tracked_positions`)."""
        dropoff = job.dropoff
        return cls(
            id=job.id,
            status=job.status,
            pickup=PlaceView(**vars(job.pickup)),
            dropoff=PlaceView(**vars(dropoff)) if dropoff else None,
            notes=job.notes,
            customer=PersonView(id=job.customer.id, name=job.customer.name),
            driver=PersonView(id=job.driver.id, name=job.driver.name) if job.driver else None,
            created_at=job.created_at,
            accepted_at=job.accepted_at,
            expires_at=job.expires_at,
            arrived_at=job.arrived_at,
            started_at=job.started_at,
            completed_at=job.completed_at,
            cancelled_at=job.cancelled_at,
            cancelled_by=job.cancelled_by,
            driver_location=DriverLocationView.of(driver_at),
        )


def job_views(r: redis.Redis, jobs: list[Job]) -> list[JobView]:
    """The jobs as clients see them, each with its driver's last position while tracked
    (one Redis call for all of them, none when no job is tracked)."""
    positions = tracked_positions(r, jobs)
    return [JobView.of(job, positions.get(job.id)) for job in jobs]


class OfferFields(Protocol):
    """What an offer's `job:new` takes from it: a stored Offer or one its round just made."""

    @property
    def distance_km(self) -> float: ...

    @property
    def offered_at(self) -> datetime: ...


class OfferView(BaseModel):
    job: JobView
    distance_km: float
    offered_at: UTCTime

    @classmethod
    def of(cls, offer: Offer, job: JobView | None = None) -> OfferView:
        """The offer as drivers see it; `job`, when given, is its job's view, built once
        for a fan-out to many drivers."""
        return cls(
            job=job if job is not None else JobView.of(offer.job),
            distance_km=round(offer.distance_km, 3),
            offered_at=offer.offered_at,
        )

    @staticmethod
    def payloads(job: dict[str, Any], offers: Sequence[OfferFields]) -> list[dict[str, Any]]:
        """`as_json(OfferView.of(offer, view))` of each offer of one fan-out, `job` being
        `as_json(view)`, dumped once for all of them instead of once an offer."""
        return [
            {"job": job, "distance_km": round(o.distance_km, 3), "offered_at": utc_z(o.offered_at)}
            for o in offers
        ]


class ActorView(BaseModel):
    id: int
    role: str


class JobEventView(BaseModel):
    type: str = Field(json_schema_extra={"enum": [t.value for t in EventType]})
    at: UTCTime
    actor: ActorView | None
    count: int | None = Field(description="How many drivers were offered the job (offered)")
    reason: str | None = Field(description="The customer's reason (cancelled), if given")

    @classmethod
    def of(cls, event: JobEvent) -> JobEventView:
        return cls(
            type=event.type,
            at=event.at,
            actor=(
                ActorView(id=event.actor_id, role=event.actor_role)
                if event.actor_id is not None and event.actor_role is not None
                else None
            ),
            count=event.data.get("count") if event.type == EventType.offered else None,
            reason=event.data.get("reason") if event.type == EventType.cancelled else None,
        )


def _age_s(since: datetime, now: datetime) -> float:
    return round(max(0.0, (now - since).total_seconds()), 1)


class OpsDriverView(BaseModel):
    """A driver as operators see them."""

    id: int
    name: str
    email: str
    online: bool
    approved: bool
    suspended: bool
    suspended_at: UTCTime | None
    current_job_id: int | None = Field(description="The job they are on, if any")
    position: DriverLocationView | None = Field(description="Their last reported position")
    position_age_s: float | None = Field(description="Seconds since that report")

    @classmethod
    def of(cls, status: DriverStatus, now: datetime) -> OpsDriverView:
        driver, profile, where = status.driver, status.profile, status.position
        return cls(
            id=driver.id,
            name=driver.name,
            email=driver.email,
            online=profile.online,
            approved=profile.approved,
            suspended=profile.suspended,
            suspended_at=profile.suspended_at,
            current_job_id=profile.current_job_id,
            position=DriverLocationView.of(where),
            position_age_s=_age_s(where.at, now) if where else None,
        )


class DriverStandingView(BaseModel):
    """What `driver:suspended` and `driver:approved` tell the driver's sockets."""

    driver_id: int
    approved: bool
    suspended: bool
    at: UTCTime

    @classmethod
    def of(cls, profile: DriverProfile, event: DriverEvent) -> DriverStandingView:
        return cls(
            driver_id=profile.user_id,
            approved=profile.approved,
            suspended=profile.suspended,
            at=event.at,
        )


class DriverEventView(BaseModel):
    type: str = Field(json_schema_extra={"enum": [t.value for t in DriverEventType]})
    at: UTCTime
    actor: ActorView | None = Field(description="The operator; null for the command line")

    @classmethod
    def of(cls, event: DriverEvent) -> DriverEventView:
        actor = event.actor
        return cls(
            type=event.type,
            at=event.at,
            actor=ActorView(id=actor.id, role=actor.role) if actor else None,
        )


class OpsJobView(JobView):
    """A job as operators see it: its age, and whom it is offered to now."""

    age_s: float = Field(description="Seconds since it was created")
    offered_to: int = Field(
        description="Drivers it is offered to in its current round (not declined)"
    )


def ops_job_views(
    r: redis.Redis, jobs: list[Job], offered_to: dict[int, int], now: datetime
) -> list[OpsJobView]:
    return [
        OpsJobView(
            **dict(view), age_s=_age_s(job.created_at, now), offered_to=offered_to.get(job.id, 0)
        )
        for job, view in zip(jobs, job_views(r, jobs), strict=True)
    ]


class DriverCountsView(BaseModel):
    total: int
    online: int
    on_job: int
    suspended: int
    awaiting_approval: int


class JobCountsView(BaseModel):
    pending: int
    accepted: int
    arrived: int
    in_progress: int


class LiveCountsView(BaseModel):
    drivers: DriverCountsView
    jobs: JobCountsView

    @classmethod
    def of(cls, counts: LiveCounts) -> LiveCountsView:
        return cls(drivers=DriverCountsView(**counts.drivers), jobs=JobCountsView(**counts.jobs))


def as_json(model: BaseModel) -> dict[str, Any]:
    """The JSON-ready dict of a view: what REST answers and what events and pushes carry."""
    return model.model_dump(mode="json")


def field_reasons(exc: ValidationError) -> dict[str, str]:
    """Pydantic's errors as `{"field.path": "why"}`; errors about the whole body go under `body`."""
    fields: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        path = ".".join(str(part) for part in err["loc"]) or "body"
        if err["type"] == "extra_forbidden":
            reason = "unknown field"
        elif err["type"] == "missing":
            reason = "required"
        elif err["type"] == "json_invalid":
            reason = "not valid JSON"
        elif err["type"] == "model_type" and path == "body":
            reason = "must be a JSON object"
        else:
            reason = err["msg"].removeprefix("Value error, ")
        fields.setdefault(path, reason)
    return fields
