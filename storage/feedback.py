"""Ratings of the bot's answers (migration 0013): 👍 or 👎 from the user who asked, one per user
and answer, changed in place; and the evaluation set they make: each rated answer with its
question, the history before it, its knowledge-base sources, and what a person answered after it
when there was a handoff.

A button names the answer by its turn (the user message it answers), which the channel knows
when it shows the reply; the reply's own row is found from it here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, literal, select
from sqlalchemy.orm import aliased

from .database import Database, dialect_insert
from .models import Conversation, Feedback, Message, MessageStatus, Rating, utcnow

HISTORY = 10  # messages before the question, in an exported row


@dataclass(frozen=True, slots=True)
class Rated:
    """A rating stored: the answer it is of, and whether it changed a rating given before."""

    answer_id: int
    changed: bool


@dataclass(frozen=True, slots=True)
class LoggedTurn:
    """A user message that was answered, and the answer it got: what ``frontdesk replay``
    answers again."""

    conversation_id: int
    question_id: int
    question: str
    answer: str
    model: str | None
    tokens_out: int | None
    latency_ms: float | None
    rating: str | None  # the asker's rating of the answer, if any


@dataclass(frozen=True, slots=True)
class RatedAnswer:
    """One row of the evaluation set."""

    feedback_id: int
    conversation_id: int
    platform: str
    user_id: str
    rating: str
    rated_at: datetime
    question: str
    answer: str
    answer_id: int
    model: str | None
    sources: list[dict[str, Any]]
    history: list[dict[str, str]]  # the messages before the question, oldest first
    agent_answer: str | None  # what a person wrote next, when the customer was handed over


class FeedbackQueries(Database):
    """The queries of ratings."""

    async def rate(self, question_id: int, user_id: str, rating: Rating) -> Rated | None:
        """Store ``user_id``'s rating of the answer to message ``question_id``; None when there
        is no such answer (purged, or never given). Pressing the same button again changes
        nothing; the other one replaces the rating."""
        now = utcnow()
        insert = dialect_insert(self.dialect)
        async with self.transaction() as conn:
            answer_id = await conn.scalar(
                select(Message.id).where(
                    Message.reply_to_id == question_id,
                    Message.role == "assistant",
                    Message.status == MessageStatus.OK,
                )
            )
            if answer_id is None:
                return None
            before = await conn.scalar(
                select(Feedback.rating).where(
                    Feedback.message_id == answer_id, Feedback.user_id == user_id
                )
            )
            upsert = insert(Feedback).values(
                message_id=answer_id, user_id=user_id, rating=rating, created_at=now,
                updated_at=now,
            )  # fmt: skip
            await conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=["message_id", "user_id"],
                    set_={"rating": rating, "updated_at": now},
                )
            )
        return Rated(answer_id=answer_id, changed=before is not None and before != rating)

    async def rated_answers(
        self, *, rating: Rating | None = None, since: datetime | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[RatedAnswer]:  # fmt: skip
        """The rated answers, newest rating first, each with what an evaluation needs."""
        answer, question = aliased(Message), aliased(Message)
        query = (
            select(
                Feedback.id,
                Feedback.user_id,
                Feedback.rating,
                Feedback.updated_at,
                Conversation.id,
                Conversation.platform,
                question.id,
                question.content,
                answer.id,
                answer.content,
                answer.body_chars,
                answer.model,
                answer.kb_sources,
            )
            .join(answer, answer.id == Feedback.message_id)
            .join(question, question.id == answer.reply_to_id)
            .join(Conversation, Conversation.id == answer.conversation_id)
            .order_by(Feedback.updated_at.desc(), Feedback.id.desc())
        )
        if rating is not None:
            query = query.where(Feedback.rating == rating)
        if since is not None:
            query = query.where(Feedback.updated_at >= since)
        if limit is not None:
            query = query.limit(limit)
        async with self.connect() as conn:
            rows = (await conn.execute(query)).all()
            for (fid, user, rated, at, conv, platform, qid, qtext, aid, atext, body, model,
                 sources) in rows:  # fmt: skip
                earlier = (
                    await conn.execute(
                        select(Message.role, Message.content)
                        .where(
                            Message.conversation_id == conv,
                            Message.id < qid,
                            Message.status == MessageStatus.OK,
                        )
                        .order_by(Message.id.desc())
                        .limit(HISTORY)
                    )
                ).all()
                agent = await conn.scalar(
                    select(Message.content)
                    .where(
                        and_(
                            Message.conversation_id == conv,
                            Message.id > aid,
                            Message.role == "agent",
                        )
                    )
                    .order_by(Message.id)
                    .limit(1)
                )
                yield RatedAnswer(
                    feedback_id=fid, conversation_id=conv, platform=platform, user_id=user,
                    rating=rated, rated_at=at, question=qtext,
                    answer=atext[:body] if body is not None else atext, answer_id=aid,
                    model=model, sources=json.loads(sources) if sources else [],
                    history=[{"role": r, "content": c} for r, c in reversed(earlier)],
                    agent_answer=agent,
                )  # fmt: skip

    async def logged_turns(
        self, *, rating: Rating | None = None, since: datetime | None = None,
        limit: int | None = None,
    ) -> list[LoggedTurn]:  # fmt: skip
        """Answered user messages, newest first: all of them, or those whose answer was rated
        ``rating`` (by anyone). Each once, however many rated it, so ``limit`` counts turns;
        a turn's rating is ``rating``, or else the latest one given."""
        answer, question = aliased(Message), aliased(Message)
        if rating is not None:
            rated: Any = literal(rating.value)
        else:
            rated = (
                select(Feedback.rating).where(Feedback.message_id == answer.id)
                .order_by(Feedback.id.desc()).limit(1).scalar_subquery()
            )  # fmt: skip
        query = (
            select(
                answer.conversation_id,
                question.id,
                question.content,
                answer.content,
                answer.body_chars,
                answer.model,
                answer.tokens_out,
                answer.latency_ms,
                rated,
            )
            .join(question, question.id == answer.reply_to_id)
            .where(answer.role == "assistant", answer.status == MessageStatus.OK)
            .order_by(question.id.desc())
        )
        if rating is not None:
            query = query.where(
                exists().where(Feedback.message_id == answer.id, Feedback.rating == rating)
            )
        if since is not None:
            query = query.where(question.created_at >= since)
        if limit is not None:
            query = query.limit(limit)
        async with self.connect() as conn:
            rows = (await conn.execute(query)).all()
        seen: set[int] = set()  # a question answered twice (a revived turn): replayed once
        turns = []
        for conv, qid, qtext, atext, body, model, t_out, latency, rated in rows:
            if qid in seen:
                continue
            seen.add(qid)
            turns.append(LoggedTurn(
                conv, qid, qtext, atext[:body] if body is not None else atext, model, t_out,
                latency, Rating(rated) if rated is not None else None,
            ))  # fmt: skip
        return turns
