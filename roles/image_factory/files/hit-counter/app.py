"""The course notes' compose app: a web page that counts its hits in Redis.

GET / counts one hit and says which container and version answered; GET /health answers while the process can
serve, whatever Redis does (a Redis being moved must not make the orchestrator replace every web task)."""

import os
import socket

from flask import Flask
from redis import Redis, RedisError

VERSION = os.environ.get("HIT_COUNTER_VERSION", "unknown")
app = Flask(__name__)
redis = Redis(
    host=os.environ.get("REDIS_HOST", "redis"),
    port=int(os.environ.get("REDIS_PORT", "6379")),
    socket_connect_timeout=2,
    socket_timeout=2,
    retry_on_timeout=True,
)


@app.route("/")
def hit():
    try:
        count = redis.incr("hits")
    except RedisError as error:
        return f"{socket.gethostname()} (hit-counter {VERSION}) cannot count: {error}\n", 503
    return f"Hello from {socket.gethostname()} (hit-counter {VERSION}): I have been seen {count} times.\n"


@app.route("/health")
def health():
    return "ok\n"
