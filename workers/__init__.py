"""Celery tasks and the emitters they use: Socket.IO events through Redis, APNs pushes."""
