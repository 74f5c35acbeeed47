"""Keep conversations.message_count and last_activity_at up to date with a trigger.

Every message insert then is one statement, atomic with its counters, and no writer can forget
them: the gateway and the worker each write a turn in a single round trip.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION frontdesk_count_message() RETURNS trigger AS $$
            BEGIN
                UPDATE conversations
                   SET message_count = message_count + 1,
                       last_activity_at = GREATEST(last_activity_at, NEW.created_at)
                 WHERE id = NEW.conversation_id;
                RETURN NULL;
            END;
            $$ LANGUAGE plpgsql
            """
        )
        op.execute(
            "CREATE TRIGGER messages_count_insert AFTER INSERT ON messages "
            "FOR EACH ROW EXECUTE FUNCTION frontdesk_count_message()"
        )
    else:
        op.execute(
            """
            CREATE TRIGGER messages_count_insert AFTER INSERT ON messages
            BEGIN
                UPDATE conversations
                   SET message_count = message_count + 1,
                       last_activity_at = MAX(last_activity_at, NEW.created_at)
                 WHERE id = NEW.conversation_id;
            END
            """
        )


def downgrade() -> None:
    op.execute(
        "DROP TRIGGER messages_count_insert ON messages"
        if op.get_bind().dialect.name == "postgresql"
        else "DROP TRIGGER messages_count_insert"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION frontdesk_count_message()")
