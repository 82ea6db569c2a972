"""aiohttp only: the application factory, handlers, relays, security middleware, lifecycle,
warm-up task.
"""
