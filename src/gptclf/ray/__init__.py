"""gptclf past one machine, on Ray: bulk prediction on Ray Data (:func:`predict`,
``gptclf predict --engine ray``) and the DDP training loop under Ray Train
(``gptclf train --engine ray``).

Needs ``pip install 'gptclf[ray]'``; the rest of gptclf never imports Ray (this package
does only when one of its functions is called). Cluster setup: docs/scaling.md.
"""

from __future__ import annotations

from .predict import predict, read_tables

__all__ = ["predict", "read_tables"]
