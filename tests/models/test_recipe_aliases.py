"""Issue 15, finding 4: an alias trains with its preset's recipe, not GPT-2's."""

from __future__ import annotations

from gptclf.config import BOOK_RECIPE, TrainConfig, recipe_for


def test_aliases_resolve_before_the_recipe_lookup() -> None:
    canonical = recipe_for("smollm2-135m")
    assert canonical != BOOK_RECIPE  # SmolLM2 has its own measured recipe
    for alias in ("smollm2", "SmolLM2", " SMOLLM2-135M "):
        assert recipe_for(alias) == canonical, alias
    cfg = TrainConfig(model="smollm2").resolved()
    assert (cfg.trainable, cfg.lr) == (canonical["trainable"], canonical["lr"])


def test_unknown_models_get_the_books_recipe() -> None:
    assert recipe_for("/some/local/dir") == BOOK_RECIPE
    assert TrainConfig(model="gpt2-small").resolved().trainable == "last_block"
