"""The HTTP API's request and response bodies (`mrag.server`): what a request may hold, checked before
anything runs (422 otherwise, naming the field)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pydantic.dataclasses
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)
from starlette.convertors import Convertor, register_url_convertor

from mrag.documents import check_utf8
from mrag.generate.base import DEFAULT_MAX_TOKENS
from mrag.retrieve import strategies as retrieve
from mrag.retrieve import types
from mrag.retrieve.filter_sql import MAX_WHERE_CHARS
from mrag.settings import names

MAX_K = 1000


class AnyId(Convertor[str]):
    """An id in a URL's path (`/documents/{doc_id:anyid}`): any text, with slashes and line breaks (Starlette's
    `path` stops at a line break: such an id was a 404 that `POST /documents/delete` deleted)."""

    regex = "(?s:.+)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anyid", AnyId())


def _utf8_as(where: str) -> AfterValidator:
    """`check_utf8` for one field, named `where` in its error (pydantic checks a plain str itself, not a StrictStr
    or a list's items)."""
    return AfterValidator(lambda value: check_utf8(value, where))


Subqueries = Annotated[list[str] | None, _utf8_as("subqueries")]
# an id, a title or a source: a number as its text (not NaN or an infinity: "nan" is no one's id)
Name = StrictStr | StrictInt | Annotated[StrictFloat, Field(allow_inf_nan=False)]


Strategy = Field(None, description=f"One of: {', '.join(retrieve.strategy_names())}; default: the index's "
                                   f"(recorded by mrag tune), else {retrieve.DEFAULT_STRATEGY}.")


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):  # JSON true is no count (pydantic would take it as 1)
        raise ValueError("must be a whole number, not true or false")
    return value


Count = Annotated[int, BeforeValidator(_no_bool)]  # a number of hits, tokens, ...: 3 or "3" (a GET), not true
Where = Annotated[str | None, Field(min_length=1, max_length=MAX_WHERE_CHARS, description=(
    "Only chunks this SQL filter keeps, as LanceDB takes it: columns id, doc_id, source, title, position, text, "
    "metadata (JSON text); e.g. \"source LIKE '%/notes/%'\"."))]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option (strategey=...) is refused, not ignored

    query: str = Field(min_length=1)
    k: Count = Field(5, ge=1, le=MAX_K)
    strategy: str | None = Strategy
    explain: bool = Field(False, description="Include the votes (space, rank, weight) behind each hit.")
    c: Count | None = Field(None, ge=1, le=10_000, description="Per-space depth (default max(k, 32)).")
    subqueries: Subqueries = Field(None, description="For fusion strategies; default: the LLM writes them.")
    exact: bool | None = Field(None, description="true: exact search; false: the ANN indexes; default: ANN if built.")
    nprobes: Count | None = Field(None, ge=1, le=100_000, description="IVF partitions per ANN search.")
    spaces: list[str] | str | None = Field(None, description="Only these voters: standard, heads, head:3, split, "
                                                             "bm25, a space's label (comma-separated, a list, or "
                                                             "spaces= repeated in a GET).")
    where: Where = None

    @field_validator("spaces")
    @classmethod
    def _split_spaces(cls, spaces: list[str] | str | None) -> list[str] | None:
        """"standard,bm25" as two spaces, as `--spaces` takes them."""
        return None if spaces is None else names(spaces)


@pydantic.dataclasses.dataclass
class Hit(types.Hit):
    """The library's `Hit`; its votes only with `explain` (left out of the response otherwise)."""

    votes: list[dict[str, Any]] | None = None  # type: ignore[assignment]


class SearchResponse(BaseModel):
    query: str
    strategy: str
    subqueries: list[str]
    hits: list[Hit]


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1)
    k: Count = Field(5, ge=1, le=MAX_K)
    strategy: str | None = Strategy
    max_context_chars: Count | None = Field(None, ge=1)
    max_tokens: Count = Field(DEFAULT_MAX_TOKENS, ge=1, le=8192)
    stream: bool = Field(False, description="Server-sent events: context, token..., answer.")
    subqueries: Subqueries = None
    where: Where = None


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="allow")  # other fields are metadata, as `Index.add` keeps them

    # as `Index.add` takes them: a number as its text, null as none
    id: Annotated[Name | None, _utf8_as("id")] = Field(None, description="Default: a hash of the text.")
    text: str = Field(min_length=1)
    title: Annotated[Name | None, _utf8_as("title")] = ""
    source: Annotated[Name | None, _utf8_as("source")] = ""
    metadata: Annotated[dict[str, Any] | None, _utf8_as("metadata")] = None

    @model_validator(mode="after")
    def _utf8_fields(self) -> DocumentIn:
        """The other fields (metadata) hold UTF-8 text too."""
        check_utf8(self.model_extra or {})
        return self


class DocumentsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt "mdoe" is refused, not the default mode taken

    documents: list[DocumentIn] = Field(min_length=1)
    mode: Literal["upsert", "add"] = Field("upsert", description="add refuses an existing id with other content.")


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: Annotated[list[Name], _utf8_as("ids")] = Field(
        min_length=1, description="Document or chunk ids; all must exist.")
