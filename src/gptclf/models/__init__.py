"""Model families from scratch, one file each (``gpt2.py``, ``llama.py``), listed in
``registry.py``; ``classifier.py`` holds the chapter's model steps (swap the head, freeze,
pool the last token)."""
