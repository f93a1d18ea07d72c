"""Request and response models of the HTTP API: what comes in is separate from what goes out."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Up to three levels of nested numbers (C×H×W); spelled out, since a recursive "any array"
# schema makes generated OpenAPI clients and fuzzers produce unbounded JSON.
NESTED_NUMBERS: dict[str, Any] = {
    "anyOf": [
        {"type": "number"},
        {
            "type": "array",
            "items": {
                "anyOf": [{"type": "number"}, {"type": "array", "items": {"type": "number"}}]
            },
        },
    ]
}


class FocusItem(BaseModel):
    """One focus entry: shift a class (or token) up or down, optionally inside a region."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    class_: str | int | None = Field(
        None,
        alias="class",
        description="A label (string) or class index (integer); 'all' or '*' for every class.",
    )
    token: str | int | None = Field(
        None, description="Generation only: a token (string) or token id instead of a class."
    )
    direction: Literal["up", "down"] = Field(description="'up' shows more of it, 'down' less.")
    strength: float = Field(
        ge=0, le=1000, allow_inf_nan=False, description="λ in logit units (0 to 1000)."
    )
    region: list[int] | None = Field(
        None,
        min_length=4,
        max_length=4,
        description="Segmentation only: [x0, y0, x1, y1] pixel box (half-open).",
    )


class ImageInput(BaseModel):
    """An image input: base64 PNG or JPEG bytes."""

    model_config = ConfigDict(extra="forbid")

    image_b64: str = Field(
        description="Base64-encoded PNG or JPEG (a `data:image/png;base64,` prefix is accepted)."
    )


class PredictRequest(BaseModel):
    """`POST /predict` for classification and segmentation models."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[Any] = Field(
        min_length=1,
        description="Numeric arrays in the model's input shape, or {'image_b64': ...} objects.",
        json_schema_extra={
            "items": {
                "anyOf": [
                    {"type": "array", "items": NESTED_NUMBERS},
                    {
                        "type": "object",
                        "properties": {"image_b64": {"type": "string"}},
                        "required": ["image_b64"],
                        "additionalProperties": False,
                    },
                ]
            }
        },
    )
    top_k: int | None = Field(None, ge=1, le=1000, description="Classes per prediction.")
    focus: list[FocusItem] = Field(default_factory=list, description="Focus entries.")


class GenerateRequest(BaseModel):
    """`POST /predict` for generation models."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=20_000)
    max_new_tokens: int = Field(32, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0, le=10, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    focus: list[FocusItem] = Field(default_factory=list)
    stream: bool = False


class TopK(BaseModel):
    label: str
    index: int
    score: float


class Classification(TopK):
    top_k: list[TopK]


class Segmentation(BaseModel):
    mask: list[list[int]]
    counts: dict[str, int]


class PredictResponse(BaseModel):
    model: str
    tier: str
    task: Literal["classification", "segmentation"]
    predictions: list[Classification] | list[Segmentation]


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class ModelInfo(BaseModel):
    name: str
    task: str
    labels: list[str]
    input: dict[str, Any]
    tiers: list[str]
    tier: str
    digest: dict[str, str] | None = None
    """The replay memory's digest: ``{"kind": "encoder", "source", "fingerprint", "threshold"}``,
    or ``{"kind": "fallback", "source"}`` (a weaker one); null for tasks without the memory."""


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        401: "No key, or an unknown key",
        403: "Tier above the key's, or a feature the tier does not include",
        413: "Payload too large",
        422: "Invalid input; `field` names it",
        429: "Rate limit of the tier; see Retry-After",
        503: "Queue full or not ready; see Retry-After",
    }.items()
}
