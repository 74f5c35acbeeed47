"""frontdesk's model side: the turn queue, the worker, the context builder and the backends."""
