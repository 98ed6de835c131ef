"""Keep the coordinator's Celery consumer alive when Redis goes away under it.

Celery 5.7 handles a lost broker connection by first dropping the kombu
transport's client (`Connection.collect`) and then closing the connection.
Closing the Redis channel restores its unacknowledged messages, which needs
that client: it raises AttributeError, which Celery treats as unrecoverable
and the coordinator shuts down. The coordinator always holds unacknowledged
messages (its job tasks are acks_late and run for hours), so every Redis
restart would end it.

With the client gone, Redis is unreachable anyway: the messages stay in
Redis's unacked hash, as after any crash, and nothing is lost by skipping
the restore. A job task that ends after the reconnect still acknowledges
its message through the old channel; that ack goes through a client of its
own, so the message does not come back after the visibility timeout.
"""

from __future__ import annotations

import logging

from .. import redisconn

log = logging.getLogger("editbatch.jobs")

ACK_RETRY_S = 60.0

_installed = False


def install(broker: str) -> None:
    global _installed
    if _installed:
        return
    from kombu.transport import redis as kombu_redis

    qos = kombu_redis.QoS
    restore_unacked, ack = qos.restore_unacked, qos.ack
    client = redisconn.connect(broker)

    def dropped(self) -> bool:
        # A closed channel has no transport either; a dropped transport has no client.
        return getattr(self.channel.connection, "client", None) is None

    def patched_restore_unacked(self, client=None):
        if dropped(self):
            log.warning("broker connection lost with %d job message(s) unacknowledged; they stay in Redis",
                        len(self._delivered))
            self._delivered.clear()
            return None
        return restore_unacked(self, client)

    def patched_ack(self, delivery_tag):
        if not dropped(self):
            return ack(self, delivery_tag)

        def remove():
            with client.pipeline() as pipe:
                pipe.zrem(self.unacked_index_key, delivery_tag).hdel(self.unacked_key, delivery_tag).execute()

        redisconn.retrying(remove, ACK_RETRY_S)
        self._delivered.pop(delivery_tag, None)
        return None

    qos.restore_unacked, qos.ack = patched_restore_unacked, patched_ack
    _installed = True
