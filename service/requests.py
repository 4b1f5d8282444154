"""The API's request bodies, shaped by the served model so that the OpenAPI document states exactly
what the service accepts: an image model takes a `label` among its classes, a text model a `prompt` in
its characters (with a temperature and a length); both take `n` and `seed` within the service's limits;
unknown fields, wrong types and other fields are refused. A client generated from the document sends
valid requests, and what the document allows the service answers.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from service.settings import Settings

# what /generate hands out: <request id>-<index>, the index without leading zeros (one id per sample)
SAMPLE_ID = r"^[0-9a-f]{32}-(0|[1-9][0-9]*)$"


def _openapi_nullable(schema: dict) -> None:
    """`X | None` is JSON Schema's anyOf [X, null], of which BentoML's OpenAPI 3.0 document keeps only
    the first: say `nullable: true` instead (and list null in an enum, as OpenAPI 3.0.3 asks)."""
    for prop in schema.get("properties", {}).values():
        alts = prop.get("anyOf")
        if alts and len(alts) == 2 and {"type": "null"} in alts:
            prop.pop("anyOf")
            prop.update(next(a for a in alts if a != {"type": "null"}), nullable=True)
            if "enum" in prop:
                prop["enum"] = [*prop["enum"], None]


STRICT = ConfigDict(extra="forbid", strict=True, json_schema_extra=_openapi_nullable)


def _refuse(field: str, why: str):
    """A validator naming a field that belongs to the other kind of model."""

    @model_validator(mode="before")
    @classmethod
    def check(cls, data):
        if isinstance(data, dict) and field in data:
            raise ValueError(why)
        return data

    return check


def generate_request(settings: Settings, kind: str, classes: list[str], vocab: list[str]) -> type[BaseModel]:
    """The body of POST /generate for a model of `kind` with these classes or this vocabulary."""

    class Common(BaseModel):
        model_config = STRICT

        n: Annotated[int, Field(ge=1, le=settings.max_samples, description="samples to draw")] = min(
            4, settings.max_samples
        )
        seed: Annotated[int | None, Field(ge=0, le=2**62, description="same seed, same samples")] = None

    if kind == "image":

        class ImageRequest(Common):
            label: Annotated[
                str | None,
                Field(
                    description="the class to draw (default: all in turn)",
                    json_schema_extra={"enum": classes},
                ),
            ] = None
            _no_prompt = _refuse("prompt", "this model draws images: send `label`, not `prompt`")

            @field_validator("label")
            @classmethod
            def _known(cls, v: str | None) -> str | None:
                if v is not None and v not in classes:
                    raise ValueError(f"unknown label {v!r}; labels: {', '.join(classes)}")
                return v

        return ImageRequest

    # \uXXXX escapes mean the same in the document's ECMA regex, Python's and pydantic's (Rust); a
    # character beyond them (an emoji) is written as itself, which no regex reads as syntax
    characters = "".join(f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else c for c in vocab)

    class TextRequest(Common):
        prompt: Annotated[
            str | None,
            Field(
                max_length=settings.max_prompt,
                description="text to continue, in the model's characters (default: a new line)",
                json_schema_extra={"pattern": f"^[{characters}]*$"},
            ),
        ] = None
        temperature: Annotated[float | None, Field(ge=0, le=5, description="0 = greedy")] = None
        length: Annotated[int, Field(ge=1, le=settings.max_length, description="new characters")] = min(
            200, settings.max_length
        )
        _no_label = _refuse("label", "this model writes text: send `prompt`, not `label`")

        @field_validator("prompt")
        @classmethod
        def _known(cls, v: str | None) -> str | None:
            unknown = sorted({c for c in v or "" if c not in vocab})
            if unknown:
                raise ValueError(f"prompt has characters the model does not know: {''.join(unknown)!r}")
            return v

    return TextRequest


def generate_response(kind: str) -> type[BaseModel]:
    """The answer of POST /generate: one entry per sample, its id (to rate it) and the sample itself, a
    base64 PNG or a text. Declared, it is in the OpenAPI document and JSON goes out without BentoML
    working out the media type from a schema at every answer."""
    key, what = ("image", "a base64 PNG") if kind == "image" else ("text", "the prompt and its continuation")
    sample = create_model(
        "Sample",
        id=(Annotated[str, Field(pattern=SAMPLE_ID, description="rate it with POST /feedback")], ...),
        **{key: (Annotated[str, Field(description=what)], ...)},
    )

    class GenerateResponse(BaseModel):
        model: Annotated[str, Field(description="the model version that drew the samples")]
        request_id: str
        seed: Annotated[int, Field(description="the seed used: the same request with it draws the same")]
        samples: list[sample]

    return GenerateResponse


class FeedbackRequest(BaseModel):
    """The body of POST /feedback."""

    model_config = STRICT

    sample_id: Annotated[
        str, Field(min_length=1, max_length=80, pattern=SAMPLE_ID, description="a sample id from /generate")
    ]
    rating: Annotated[int, Field(ge=1, le=5, description="1 (bad) .. 5 (good)")]
    comment: Annotated[str, Field(max_length=2000)] = ""
