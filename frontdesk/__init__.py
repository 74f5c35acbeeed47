"""frontdesk: LLM chat-bots on messaging platforms, with a queue, a worker and SQL history between."""

__version__ = "0.1.0"
