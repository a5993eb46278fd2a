"""Who hears what over Socket.IO: each user's personal room and the deployment's channel.

Workers publish into these rooms and the gateway places sockets in them, so the names live
here, beneath both (the contract names the rooms: `driver:{id}`, `customer:{id}`). Operators
share one room, where the workers and the gateway tell every change the console shows."""

from __future__ import annotations

from settings import settings

OPERATORS_ROOM = "operators"


def socketio_channel() -> str:
    """The pub/sub channel shared by workers and gateways of this deployment."""
    return settings.redis_key("socketio")


def driver_room(driver_id: int) -> str:
    return f"driver:{driver_id}"


def customer_room(customer_id: int) -> str:
    return f"customer:{customer_id}"


def personal_room(role: str, user_id: int) -> str:
    """The one room a signed-in socket is placed in: its own, or the operators' room."""
    if role == "driver":
        return driver_room(user_id)
    if role == "operator":
        return OPERATORS_ROOM
    return customer_room(user_id)
