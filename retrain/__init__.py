"""Retraining: feedback in, a gated LoRA adapter out.

``dataset`` (pure) builds training sets, ``train`` fits one adapter, ``gate``
(pure) decides, ``registry`` stores and promotes, ``cycle`` runs it all, and
``scheduler`` runs cycles on a cron. Depends on ``feedback``, never on ``serve``.
"""
