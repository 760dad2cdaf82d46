"""Pydantic schemas of the WebSocket protocol (docs/protocol.md) and of the REST bodies.

Client messages are validated here; server messages are built from these models so that what the
server sends and what the document promises cannot drift apart (tests check both).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from .security import OWNER_KEY_RE

PROTOCOL_VERSION = 1

ERROR_CODES = (
    "bad_json", "bad_message", "unknown_type", "bad_frame", "bad_parts", "bad_image", "image_too_large",
    "message_too_large", "mask_size", "sketch_size", "empty_mask", "prompt_too_long", "reserved_prompt",
    "out_of_range", "no_canvas", "unknown_session", "unknown_target", "nothing_to_undo", "queue_full",
    "too_many_sessions", "unauthorized", "bad_origin", "internal",
)
ErrorCode = Literal[ERROR_CODES]  # the same codes, as a type
#: WebSocket close codes: a bad token or Origin (the only errors that close the socket), a client that let
#: more than max_outgoing_bytes pile up unread (reconnect and resume), an older socket whose session another
#: socket resumed.
CLOSE_UNAUTHORIZED = 4401
CLOSE_BAD_ORIGIN = 4403
CLOSE_TOO_SLOW = 4408
CLOSE_TAKEN_OVER = 4409

#: Largest seed accepted (fits an int64; JavaScript numbers are exact up to 2**53 - 1).
MAX_SEED = 2**63 - 1
#: Range of sketch_strength.
MIN_SKETCH_STRENGTH, MAX_SKETCH_STRENGTH = 0.0, 2.0

RequestId = Annotated[Optional[str], Field(default=None, max_length=64)]
BinaryMessageTypes = frozenset({"canvas", "prepare", "edit"})
TextMessageTypes = frozenset({"hello", "cancel", "accept", "undo", "redo", "goto", "expand"})
ClientMessageTypes = BinaryMessageTypes | TextMessageTypes


class _Client(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    id: RequestId


# ---- client -> server ----------------------------------------------------------------------------
class Hello(_Client):
    type: Literal["hello"]
    protocol: Literal[1]
    session: Optional[str] = Field(default=None, max_length=64)
    #: the browser's owner key: a session this socket creates (its first canvas) is listed for that key only
    owner: Optional[str] = Field(default=None, pattern=OWNER_KEY_RE.pattern)


class CanvasIn(_Client):
    """Header of the binary ``canvas`` frame (part ``image``)."""

    type: Literal["canvas"]


class PrepareIn(_Client):
    """Header of the binary ``prepare`` frame (part ``mask``): the mask being painted, so that the server
    encodes its context while the prompt is still being written. Answered by ``prepared`` once done."""

    type: Literal["prepare"]


class EditIn(_Client):
    """Header of the binary ``edit`` frame (part ``mask``, optional part ``sketch``)."""

    type: Literal["edit"]
    prompt: str
    seed: Optional[int] = None
    steps: Optional[int] = None
    guidance: Optional[float] = None
    sketch_strength: Optional[float] = None

    model_config = ConfigDict(extra="ignore", strict=True)


class Cancel(_Client):
    type: Literal["cancel"]
    target: str = Field(max_length=64)


class Accept(_Client):
    type: Literal["accept"]
    target: str = Field(max_length=64)


class Undo(_Client):
    type: Literal["undo"]


class Redo(_Client):
    type: Literal["redo"]


class Goto(_Client):
    type: Literal["goto"]
    index: int


MAX_EXPAND = 4096  # pixels added on one side at most (the canvas limit applies to the result as well)


class Expand(_Client):
    """Grow the canvas by these many pixels on each side: a new history entry of the larger size (undo shrinks
    it back); the new border repeats the edge pixels until an edit paints it. Answered by ``canvas``."""

    type: Literal["expand"]
    left: int = Field(0, ge=0, le=MAX_EXPAND)
    top: int = Field(0, ge=0, le=MAX_EXPAND)
    right: int = Field(0, ge=0, le=MAX_EXPAND)
    bottom: int = Field(0, ge=0, le=MAX_EXPAND)

    @model_validator(mode="after")
    def _grows(self) -> "Expand":
        if not (self.left or self.top or self.right or self.bottom):
            raise ValueError("expand adds nothing: give left, top, right or bottom a number of pixels")
        return self


ClientMessage = Annotated[
    Union[Hello, CanvasIn, PrepareIn, EditIn, Cancel, Accept, Undo, Redo, Goto, Expand], Field(discriminator="type")
]
client_message_adapter: TypeAdapter[Any] = TypeAdapter(ClientMessage)


# ---- shared pieces -----------------------------------------------------------------------------
class PartSpec(BaseModel):
    name: str
    bytes: int
    mime: str


class Limits(BaseModel):
    max_pixels: int
    max_image_bytes: int
    max_message_bytes: int
    max_prompt_chars: int
    min_steps: int
    max_steps: int
    min_guidance: float
    max_guidance: float
    results_kept: int = Field(1, description="un-accepted results of a session that stay acceptable (the newest)")


class HistoryEntry(BaseModel):
    index: int = Field(description="0 is the uploaded canvas; each accepted edit appends one")
    prompt: Optional[str] = Field(description="null for the uploaded canvas")
    seed: Optional[int]
    created: str = Field(description="ISO 8601, UTC")


class CanvasInfo(BaseModel):
    version: int
    width: int
    height: int


# ---- server -> client --------------------------------------------------------------------------
class Ready(BaseModel):
    type: Literal["ready"] = "ready"
    id: Optional[str] = None
    protocol: int = PROTOCOL_VERSION
    session: str
    model: str
    device: str
    limits: Limits
    canvas: Optional[CanvasInfo]
    history: list[HistoryEntry]
    position: int
    default_steps: int
    default_guidance: float


class CanvasOut(BaseModel):
    """Header of the server's binary ``canvas`` frame (part ``image``, PNG)."""

    type: Literal["canvas"] = "canvas"
    id: Optional[str] = None
    version: int
    width: int
    height: int
    position: int
    history: list[HistoryEntry]


class Ack(BaseModel):
    type: Literal["ack"] = "ack"
    id: Optional[str] = None
    of: Literal["canvas", "accept"]
    version: int
    width: int
    height: int
    position: int
    history: list[HistoryEntry]


class Prepared(BaseModel):
    """A ``prepare`` is done: the next edit of this canvas and mask starts at the diffusion transformer.
    A prepare that a newer one or an edit made pointless gets no answer."""

    type: Literal["prepared"] = "prepared"
    id: Optional[str] = None
    timings: dict[str, float] = Field(description="vae_encode_ms, context_ms, known_pixels_ms: 0 where a cache already held it")


class Progress(BaseModel):
    """Header of the binary ``progress`` frame (part ``preview``, JPEG)."""

    type: Literal["progress"] = "progress"
    id: Optional[str] = None
    step: int
    total: int
    box: tuple[int, int, int, int]


class Result(BaseModel):
    """Header of the binary ``result`` frame (part ``image``, PNG of the box region)."""

    type: Literal["result"] = "result"
    id: Optional[str] = None
    seed: int
    box: tuple[int, int, int, int]
    timings: dict[str, float]
    steps: int


class Cancelled(BaseModel):
    type: Literal["cancelled"] = "cancelled"
    id: Optional[str] = None


class Error(BaseModel):
    type: Literal["error"] = "error"
    id: Optional[str] = None
    code: ErrorCode
    message: str


ServerMessage = Annotated[
    Union[Ready, CanvasOut, Ack, Prepared, Progress, Result, Cancelled, Error], Field(discriminator="type")
]
server_message_adapter: TypeAdapter[Any] = TypeAdapter(ServerMessage)


# ---- REST bodies --------------------------------------------------------------------------------
class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    device: str
    version: str
    protocol: int = PROTOCOL_VERSION


class SessionCreated(BaseModel):
    session: str
    width: int
    height: int
    version: int


class SessionSummary(BaseModel):
    session: str
    width: int
    height: int
    created: str
    updated: str
    edits: int = Field(description="accepted edits in the history")


class SessionDetail(BaseModel):
    session: str
    width: int
    height: int
    version: int
    position: int
    history: list[HistoryEntry]


class ErrorBody(BaseModel):
    code: ErrorCode
    message: str


class HTTPErrorOut(BaseModel):
    detail: ErrorBody
