"""Data: the chapter's SMS Spam Collection (``sms_spam.py``), the user's tables (``tables.py``,
the one reader), the chapter's balance and split (``splits.py``), token ids (``encoding.py``)
and batches (``batching.py``)."""
