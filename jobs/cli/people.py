"""facegrid commands for people (users) and for searching a collection by one of its faces: the same use cases
as the HTTP routes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jobs.cli.admin import faces_app
from jobs.cli.common import JsonFlag, call, emit

users_app = typer.Typer(help="People: faces grouped under a user id, searched as one.", no_args_is_help=True)
Purpose = Annotated[str, typer.Option(help="Why: one of the deployment's purposes.")]
CaseId = Annotated[str, typer.Option(help="The case this search serves.")]
Threshold = Annotated[float | None, typer.Option(help="Minimum similarity; never below the floor.")]


@faces_app.command("search")
def faces_search(
    collection: str,
    face_id: str,
    purpose: Purpose,
    case_id: CaseId,
    threshold: Threshold = None,
    max_results: int = 10,
    as_json: JsonFlag = False,
) -> None:
    """Faces like an indexed one (SearchFaces; the face itself left out): POST .../faces/{face_id}/search."""
    from serving.usecases import search
    from serving.usecases.policy import SearchRequest

    request = SearchRequest(purpose, case_id, threshold, max_results)
    emit(call(lambda s, c: search.search_face(s, c, collection, face_id, request)), as_json)


@users_app.command("create")
def users_create(collection: str, user_id: str, as_json: JsonFlag = False) -> None:
    from serving.usecases import people

    emit(call(lambda s, c: people.create(s, c, collection, user_id)), as_json)


@users_app.command("list")
def users_list(collection: str, limit: int = 100, offset: int = 0, as_json: JsonFlag = False) -> None:
    from serving.usecases import people

    emit(call(lambda s, c: people.page(s, c, collection, limit, offset)), as_json)


@users_app.command("delete")
def users_delete(
    collection: str,
    user_id: str,
    erase_faces: Annotated[bool, typer.Option(help="Also erase the user's faces (real erasure).")] = False,
    as_json: JsonFlag = False,
) -> None:
    from serving.usecases import people

    emit(call(lambda s, c: people.delete(s, c, collection, user_id, erase_faces)), as_json)


@users_app.command("associate")
def users_associate(collection: str, user_id: str, face_ids: list[str], as_json: JsonFlag = False) -> None:
    """Associate up to 100 faces with the user; a face belongs to at most one user."""
    from serving.usecases import people

    emit(call(lambda s, c: people.associate(s, c, collection, user_id, face_ids)), as_json)


@users_app.command("disassociate")
def users_disassociate(collection: str, user_id: str, face_ids: list[str], as_json: JsonFlag = False) -> None:
    from serving.usecases import people

    emit(call(lambda s, c: people.disassociate(s, c, collection, user_id, face_ids)), as_json)


@users_app.command("search")
def users_search(
    collection: str,
    purpose: Purpose,
    case_id: CaseId,
    face_id: Annotated[str | None, typer.Option(help="Search by this indexed face.")] = None,
    user_id: Annotated[str | None, typer.Option(help="Search by every face of this user.")] = None,
    image: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Search by a photo.")] = None,
    threshold: Threshold = None,
    max_users: int = 10,
    as_json: JsonFlag = False,
) -> None:
    """People ranked with their evidence: POST .../users/search."""
    from serving.usecases import people
    from serving.usecases.policy import SearchRequest

    request = SearchRequest(purpose, case_id, threshold)
    blob = image.read_bytes() if image is not None else None
    answer = call(
        lambda s, c: people.search(
            s, c, collection, request, face_id=face_id, user_id=user_id, image=blob, max_users=max_users
        )
    )
    emit(answer, as_json)
