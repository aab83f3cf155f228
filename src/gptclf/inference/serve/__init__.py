"""``gptclf serve``: the classifier behind an HTTP API and a small web page.

``app.py`` builds the service, ``batcher.py`` batches concurrent requests, ``http.py``
holds the limits and deadlines, ``settings.py`` every limit's default (and is all the
CLI imports, so ``gptclf --help`` does not load FastAPI).
"""
