"""The knowledge base's engine side: reading help-centre files (``documents``), cutting them into
chunks (``chunks``), adding and syncing them (``ingest``), and retrieval for a turn
(``retrieval``). Its SQL is ``frontdesk.storage.knowledge``'s."""

from .retrieval import Retrieval, Retriever, sources_footer

__all__ = ["Retrieval", "Retriever", "sources_footer"]
