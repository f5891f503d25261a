"""MLflow bookkeeping: the store (``store.py``), trial runs written idempotently (``mirror.py``) through a
durable spool (``spool.py``) that ``sync.py`` drains, the Ray callback that feeds it (``callback.py``, the
one module here that imports Ray) and a sweep read back as trial records (``results.py``)."""
