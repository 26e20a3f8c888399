"""gunicorn settings for one chat-serving replica, for operators who run gunicorn themselves.

    gunicorn -c deploy/gunicorn/serve.py 'tuneback.apps:serving_app()'

This is what ``tuneback serve`` does internally. One worker process: the model
lives in it, one thread runs it and the others carry requests (streams
included). Scale by running more replicas (processes or machines), not
workers. Each replica reports what it serves under ``TUNEBACK_REPLICA_ID``
(default ``<hostname>:<TUNEBACK_PORT>``, so keep ``TUNEBACK_PORT`` equal to the
port bound here, which this file does). Do not set ``PROMETHEUS_MULTIPROC_DIR``
for serving: with one worker it is not needed.
"""

import os

from tuneback.server import worker_exit  # noqa: F401 - gunicorn hook: removes the heartbeat row

bind = f"{os.environ.get('TUNEBACK_HOST', '127.0.0.1')}:{os.environ.get('TUNEBACK_PORT', '8000')}"
workers = 1  # the model lives in one process
worker_class = "gthread"
threads = (
    int(os.environ.get("TUNEBACK_SERVE_QUEUE_SIZE", "16"))
    + int(os.environ.get("TUNEBACK_SERVE_MAX_BATCH", "8"))
    + 8
)
timeout = 300  # loading the model counts against the first heartbeat
graceful_timeout = 30
accesslog = None
errorlog = "-"
