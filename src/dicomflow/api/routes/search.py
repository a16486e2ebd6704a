"""Free-text and field search with the Lucene-style syntax of Dicoogle's query box."""

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from dicomflow.api.auth import ViewNamespace, reader
from dicomflow.api.deps import IndexDep, SettingsDep
from dicomflow.indexer.base import MAX_LIMIT, Level, SearchRequest, flatten
from dicomflow.indexer.deadline import search_within
from dicomflow.indexer.query import parse_lucene
from dicomflow.kernel.events import Namespace

router = APIRouter(tags=["search"], dependencies=[reader])


class SearchResultsPublic(BaseModel):
    total: int
    level: Level
    namespace: Namespace
    limit: int
    offset: int
    results: list[dict[str, Any]]


@router.get("/api/search", summary="Search with Lucene-style syntax", response_model=None)
def search(
    index: IndexDep,
    namespace: ViewNamespace,
    settings: SettingsDep,
    q: Annotated[
        str,
        Query(
            max_length=4000,
            description="e.g. PatientName:DOE* AND Modality:CT AND "
            "StudyDate:[20200101 TO 20201231]; empty matches everything",
        ),
    ] = "",
    level: Level = Level.STUDY,
    limit: Annotated[int, Query(ge=0, le=MAX_LIMIT)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> SearchResultsPublic:
    request = SearchRequest(
        namespace=namespace, level=level, query=parse_lucene(q), limit=limit, offset=offset
    )
    result = search_within(index, request, settings.query_timeout)
    return SearchResultsPublic(
        total=result.total,
        level=level,
        namespace=namespace,
        limit=limit,
        offset=offset,
        results=[flatten(item) for item in result.results],
    )
