"""Celery's Redis transport (kombu's), sending its commands through one Redis client per
channel instead of a new one for each.

kombu 5.7 builds a new `redis.Redis` for every command it sends outside its consumer's own
connection: every publish (each task an API request enqueues), every acknowledgement of a
late-acked task. A new client copies redis-py's ~170 response callbacks into a dict of its
own, which was a third of a booking's publish (bench/booking.py). A client holds no
connection, only the channel's pool, and is safe to share; so one serves the channel for as
long as that pool does (kombu replaces the pool after a fork and when the channel closes).

`celeryconfig` names `Transport` as `broker_transport` when the broker is Redis."""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _commands_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the consumer's BRPOP connection: kombu's own handling
            return super()._create_client(asynchronous=True)
        pool = self.pool
        client = self._commands_client
        if client is None or client.connection_pool is not pool:
            client = self._commands_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
