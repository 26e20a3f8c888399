"""End users' thumbs up and down, from the widget or an agent, and the signed vote
tokens that let a widget vote as a known user.

A widget key is public, so the ``user`` it sends proves nothing. A widget vote is
that user's (verified) only with a vote token the chat page's backend got for it
(``POST /v1/vote-tokens``, a server key); it then replaces only that user's
earlier verified widget vote. Without a token the vote is unverified: a row of
its own, keeping the user it claims, that replaces nothing and that nothing
replaces; its answer carries a token for that one vote, so the same browser can
change it or add a comment, and reveals nothing about any other vote.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from apiflask import APIBlueprint
from apiflask.schema_adapters import registry
from flask import Request, current_app, request

from feedback import auth, rawsql
from feedback.auth import Caller, VoteToken, current_caller, require
from feedback.exceptions import ForbiddenError, InvalidInputError, NotFoundError
from feedback.idempotency import Replay, run_write
from feedback.schemas import FeedbackIn, FeedbackOut, VoteTokenIn, VoteTokenOut
from feedback.views import ERRORS, NOT_FOUND, documented_as, feedback_out, json_response
from feedback.views.completions import limit_text

bp = APIBlueprint("ratings", __name__, tag="Feedback")
# The validator APIFlask's @bp.input would use: same checks, same 422 answers.
FEEDBACK_IN = registry.create_adapter(FeedbackIn)


@bp.input(FeedbackIn, arg_name="body")
@bp.output(FeedbackOut, status_code=201)
@bp.doc(security="bearer", responses=NOT_FOUND)
def post_feedback_doc(body: FeedbackIn) -> None:
    """Vote on a completion. A user's second verified vote on it (same source) replaces
    the first.

    A widget key's vote is verified only with a signed `token`; without one it is a
    new row that replaces nothing, and the answer carries a `token` to change it.
    Send an `Idempotency-Key` header to make retries safe.
    """


@bp.post("/v1/feedback")
@documented_as(post_feedback_doc)
def post_feedback():
    # The busiest route: it checks the key and the body itself, in the order
    # @require and @bp.input would, instead of through their wrappers.
    caller = current_caller("widget", "agent")
    req = request._get_current_object()
    body: FeedbackIn = FEEDBACK_IN.validate_input(req, "json")
    ext = current_app.extensions["tuneback"]
    limit_text(body.comment)
    token = _check_vote(caller, body, ext, req)
    hours = ext.settings.vote_token_hours

    def action(tx):
        vote, replaced = _write_vote(tx, caller, body, token)
        ext.metrics.vote(body.rating, caller.role, vote["lane"])
        answer = feedback_out(vote, replaced)
        if not vote["verified"] and token is None:  # a new unverified vote: its own token
            answer["token"] = _mint(vote, int(time.time() + hours * 3600))
        return answer, 201

    transaction = rawsql.engine_write(ext.engine)  # on SQLite: a group commit (feedback.writer)
    return json_response(*run_write(transaction, action, VOTE_REPLAY))


def _check_vote(caller: Caller, body: FeedbackIn, ext: Any, req: Request) -> VoteToken | None:
    """Refuse what this vote may not do before writing; return its token's claims."""
    most = ext.settings.widget_comment_chars
    if caller.role == "widget" and body.comment is not None and len(body.comment) > most:
        raise InvalidInputError(f"a widget vote's comment may hold at most {most} characters")
    if body.token is None:
        return None
    token = auth.read_vote_token(auth.server_secret(), body.token)
    if token.completion_id != body.completion_id:
        raise ForbiddenError("the vote token is for another completion")
    if body.user is not None and body.user != token.user:
        raise ForbiddenError("the vote token is for another user; leave `user` out")
    if caller.role == "widget" and token.vote_id is None:  # a signed user's own allowance
        who = f"widget:{caller.id}:user:{token.user}"
        ext.limiter.check(req.endpoint, req.method, who, ext.settings.widget_rate_limit)
    return token


def _write_vote(
    tx: rawsql.RawTx, caller: Caller, body: FeedbackIn, token: VoteToken | None
) -> tuple[dict[str, Any], bool]:
    if token is not None and token.vote_id is not None:  # an unverified vote, changed
        vote = rawsql.change_vote(
            tx,
            vote_id=token.vote_id,
            completion_id=body.completion_id,
            rating=body.rating,
            reason=body.reason,
            comment=body.comment,
        )
        if vote is None:
            raise NotFoundError("the vote this token changes has been erased")
        return vote, True
    return rawsql.record_vote(
        tx,
        completion_id=body.completion_id,
        rating=body.rating,
        reason=body.reason,
        comment=body.comment,
        user_ref=token.user if token is not None else body.user,
        source=caller.role,
        api_key_id=caller.id,
        verified=token is not None or caller.role != "widget",
    )


def _mint(vote: dict[str, Any], expires: int) -> str:
    """The token that lets an unverified vote's sender change that vote."""
    return auth.mint_vote_token(
        auth.server_secret(),
        completion_id=vote["completion_id"],
        user=vote["user_ref"],
        expires=expires,
        vote_id=vote["id"],
    )


def _keep_vote(answer: dict[str, Any]) -> dict[str, Any]:
    kept = {"id": answer["id"], "replaced": answer["replaced"]}
    if "token" in answer:  # re-minted on replay from the row: the same token
        kept["token_expires"] = auth.read_vote_token(auth.server_secret(), answer["token"]).expires
    return kept


def _restore_vote(tx: rawsql.RawTx, kept: dict[str, Any]) -> dict[str, Any]:
    vote = rawsql.get_vote(tx, kept["id"])
    if vote is None:
        raise NotFoundError("the vote this request stored has since been erased")
    answer = feedback_out(vote, kept["replaced"])
    if "token_expires" in kept:
        answer["token"] = _mint(vote, kept["token_expires"])
    return answer


# A replayed vote is read back from its row: the record never copies the comment.
VOTE_REPLAY = Replay(keep=_keep_vote, restore=_restore_vote)


@bp.post("/v1/vote-tokens")
@require("server")
@bp.input(VoteTokenIn, arg_name="body")
@bp.output(VoteTokenOut)
@bp.doc(security="bearer", responses=ERRORS)
def post_vote_token(body: VoteTokenIn):
    """Sign a vote token: with it, the widget votes on `completion_id` as `user`.

    The chat page's backend asks for one per answer and user (it holds the server
    key; the page never does) and puts it on the answer's widget
    (`data-tuneback-token`). It expires after `TUNEBACK_VOTE_TOKEN_HOURS`.
    """
    hours = current_app.extensions["tuneback"].settings.vote_token_hours
    expires = int(time.time() + hours * 3600)
    token = auth.mint_vote_token(
        auth.server_secret(), completion_id=body.completion_id, user=body.user, expires=expires
    )
    return {
        "token": token,
        "completion_id": body.completion_id,
        "user": body.user,
        "expires_at": datetime.fromtimestamp(expires, UTC),
    }
