"""The knobs of one HTTP request: lifted from the JSON body into mm_processor_kwargs,
validated, and turned into an OpenAI-style error naming the bad field."""

from __future__ import annotations

from typing import Any

from zspa_vllm.core.params import KNOB_NAMES, parse_knobs

MM_KWARGS = "mm_processor_kwargs"


class BadRequest(Exception):
    """A request the server answers with ``status`` and an OpenAI-style error object."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.status = message, param, status

    def body(self) -> dict:
        kind = "BadRequestError" if self.status == 400 else "RequestEntityTooLargeError"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}}


def lift_knobs(request: dict[str, Any], *, knobs_only: bool) -> dict[str, Any]:
    """Move top-level knobs into ``request["mm_processor_kwargs"]`` (in place) and validate
    them; returns the knobs the request sets (empty when it sets none).

    Both spellings may be used at once only with the same value. ``knobs_only``: the
    operator has not trusted clients with other processor or media kwargs (vLLM's
    ``--trust-request-mm-kwargs``), so any other key is refused."""
    top = {name: request.pop(name) for name in KNOB_NAMES if name in request}
    mm_kwargs = request.get(MM_KWARGS)
    if mm_kwargs is None:
        mm_kwargs = {}
    elif not isinstance(mm_kwargs, dict):
        raise BadRequest(f"{MM_KWARGS} must be an object, got {type(mm_kwargs).__name__}", MM_KWARGS)
    if knobs_only:
        for key in [k for k in mm_kwargs if k not in KNOB_NAMES] + (["media_io_kwargs"] if request.get("media_io_kwargs") else []):
            param = key if key == "media_io_kwargs" else f"{MM_KWARGS}.{key}"
            raise BadRequest(
                f"{param}: only {', '.join(KNOB_NAMES)} may be set per request; the server must be "
                "started with --trust-request-mm-kwargs to accept other processor or media kwargs",
                param,
            )
    nested = {name: mm_kwargs[name] for name in KNOB_NAMES if name in mm_kwargs}
    for name, value in {**nested, **top}.items():
        param = name if name in top else f"{MM_KWARGS}.{name}"
        try:
            parse_knobs({name: value})
        except ValueError as error:
            raise BadRequest(str(error), param) from None
    for name in top.keys() & nested.keys():
        if parse_knobs({name: top[name]}) != parse_knobs({name: nested[name]}):
            raise BadRequest(
                f"{name} is set both at the top level ({top[name]!r}) and in {MM_KWARGS} "
                f"({nested[name]!r}) with different values",
                name,
            )
    knobs = {name: value for name, value in {**nested, **top}.items() if value is not None}
    if knobs or MM_KWARGS in request:
        request[MM_KWARGS] = {**mm_kwargs, **top}
    return knobs
