"""The Socket.IO gateway: drivers' and customers' live connections, fed through Redis.

Its own top-level package, not part of `api/`: it is a separate process on an asyncio
server (ASGI under uvicorn) that shares nothing with the Flask app but `models`, and it
receives what workers emit through the Redis message queue, never by import."""
