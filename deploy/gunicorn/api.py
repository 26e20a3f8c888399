"""gunicorn settings for the feedback API, for operators who run gunicorn themselves.

    PROMETHEUS_MULTIPROC_DIR=/run/tuneback-api/metrics \
        gunicorn -c deploy/gunicorn/api.py 'tuneback.apps:api_app()'

This is what ``tuneback api`` does internally. Settings come from ``TUNEBACK_*``
(``TUNEBACK_HOST``, ``TUNEBACK_PORT``, ``TUNEBACK_WORKERS``, the database URL,
``TUNEBACK_RATE_LIMIT_STORAGE=redis://...`` so limits hold across workers and
machines). Run ``deploy/prestart.sh`` first: on PostgreSQL the API refuses an
old schema.

Prometheus: with several workers each counts its own requests; the hooks give
them a shared folder (``PROMETHEUS_MULTIPROC_DIR``, emptied at start, or a
temporary one), drop dead workers' gauges, and ``/metrics`` adds every worker up.
"""

import os

from tuneback.server import child_exit, on_exit, on_starting  # noqa: F401 - gunicorn hooks

bind = f"{os.environ.get('TUNEBACK_HOST', '127.0.0.1')}:{os.environ.get('TUNEBACK_PORT', '8000')}"
workers = int(os.environ.get("TUNEBACK_WORKERS", "2"))
worker_class = "gthread"
threads = 4
timeout = 60
graceful_timeout = 10
accesslog = None
errorlog = "-"
