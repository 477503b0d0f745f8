"""``GET /api/v1/usage``: a key's jobs, images and GPU-seconds per UTC day
(``shared.usage``'s maintained rows; admins may read any key's, or every key's)."""

from __future__ import annotations

from flask import Blueprint, abort, jsonify, request
from flask.typing import ResponseReturnValue
from pydantic import BaseModel, ConfigDict, Field

from easel.shared.errors import ValidationFailed, field_detail
from easel.shared.usage import parse_range, report
from easel.web.auth import current_principal
from easel.web.limits import api_limit, limiter
from easel.web.services import services

bp = Blueprint("usage", __name__, url_prefix="/api/v1")
limiter.limit(api_limit)(bp)

PARAMETERS = ("from", "to", "key")


class UsageTotals(BaseModel):
    jobs: int = Field(description="Jobs that succeeded.")
    images: int = Field(description="Their images.")
    gpu_seconds: float = Field(description="Their share of their batches' pipeline time, in seconds.")


class UsageDay(UsageTotals):
    day: str = Field(description="The UTC day, YYYY-MM-DD.")
    key: str = Field(description="The API key's id (``anonymous`` with authentication off).")
    name: str | None = Field(description="The key's name, if it still exists.")


class UsageReport(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from", description="The first day, YYYY-MM-DD (UTC).")
    to: str = Field(description="The last day, YYYY-MM-DD (UTC), included.")
    key: str | None = Field(description="The key reported; null: every key (admins).")
    days: list[UsageDay] = Field(
        description="Each (day, key) with any use, by day then key; others are zero."
    )
    total: UsageTotals = Field(description="The sums over ``days``.")


@bp.get("/usage")
def usage() -> ResponseReturnValue:
    """The caller's usage by day (``from``/``to``: YYYY-MM-DD, UTC; ``to`` defaults to today,
    ``from`` to its month's first day); admins may pass ``key=<id>``, or see every key."""
    args = request.args
    unknown = [
        field_detail(name or "(empty name)", "is not a query parameter of this route", args.get(name))
        for name in args
        if name not in PARAMETERS
    ]
    if unknown:
        raise ValidationFailed("; ".join(f"{d['field']}: {d['message']}" for d in unknown), unknown)
    start, end = parse_range(args.get("from"), args.get("to"))
    principal = current_principal()
    owner: str | None = args.get("key") or None
    if not principal.is_admin:
        if owner is not None and owner != principal.owner_id:
            abort(403, description="only admin keys may read another key's usage")
        owner = principal.owner_id
    with services().session() as session:
        body = report(session, start, end, owner)
    return jsonify(UsageReport.model_validate(body).model_dump(mode="json", by_alias=True))
