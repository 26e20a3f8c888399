"""Chat serving: an OpenAI-compatible endpoint over the base model and the promoted adapter.

``serve.app.create_serving_app(settings, base_model_dir)`` is the entry point:
the feedback API plus ``/v1/chat/completions`` and ``/v1/models``. The model
runs on one worker thread (:mod:`serve.worker`); :mod:`serve.swap` follows the
promoted adapter in the store and swaps it in without stopping; with
``TUNEBACK_UPSTREAM_URL`` set, :mod:`serve.proxy` forwards chats to another
server instead and logs them the same way.

This package learns which adapter to serve from the store (``feedback``); it
never imports the training code. Torch is imported only when a local model is
built, so importing :mod:`serve.app` stays cheap.
"""
