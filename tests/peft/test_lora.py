"""LoRA: B=0 is the base model, merging is exact, adapters save small and reload, the CLI trains."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import env_with, write_gpt2_config_only
from safetensors.torch import load_file

from gptclf.models.classifier import SequenceClassifier, replace_head
from gptclf.errors import GptclfError
from gptclf.peft.lora import LoRAConfig, LoRALinear, apply_lora, freeze_for_lora, merge_lora, parse_targets
from gptclf.inference.classifier import Classifier
from gptclf.config import TrainConfig
from gptclf.training.recipe import run_training
from gptclf.loading import load_backbone


def _classifier(model_dir: Path, lora: LoRAConfig | None, seed: int = 0) -> SequenceClassifier:
    bb = load_backbone(str(model_dir))
    torch.manual_seed(seed)
    replace_head(bb.model, 2)
    if lora is not None:
        freeze_for_lora(bb.model, lora)
    return SequenceClassifier(bb.model).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 50257, (3, 9), generator=g), torch.tensor([9, 4, 6])


def test_lora_with_zero_b_is_the_base_model(tiny_gpt2: Path) -> None:
    base = _classifier(tiny_gpt2, None)
    lora = _classifier(tiny_gpt2, LoRAConfig(rank=4, alpha=8))
    assert sum(isinstance(m, LoRALinear) for m in lora.modules()) == 4 * 2  # 4 linears x 2 blocks
    ids, lengths = _batch()
    with torch.no_grad():
        assert torch.equal(base(ids, lengths), lora(ids, lengths))


def test_merged_model_predicts_what_the_unmerged_one_does(tiny_gpt2: Path) -> None:
    model = _classifier(tiny_gpt2, LoRAConfig(rank=4, alpha=8))
    torch.manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.05)  # a trained-looking, non-zero update
    ids, lengths = _batch()
    with torch.no_grad():
        before = model(ids, lengths)
        base = _classifier(tiny_gpt2, None)(ids, lengths)
        assert (before - base).abs().max() > 1e-3  # the adapters do change the output
        assert merge_lora(model) == 8
        assert not any(isinstance(m, LoRALinear) for m in model.modules())
        after = model(ids, lengths)
    assert torch.allclose(before, after, atol=1e-5, rtol=0)


def test_only_adapters_final_norm_and_head_train(tiny_gpt2: Path) -> None:
    model = _classifier(tiny_gpt2, LoRAConfig(rank=4, alpha=4, targets=("att.qkv",)))
    names = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert names == {"trf_blocks.0.att.qkv.lora_A", "trf_blocks.0.att.qkv.lora_B",
                     "trf_blocks.1.att.qkv.lora_A", "trf_blocks.1.att.qkv.lora_B",
                     "final_norm.weight", "final_norm.bias", "out_head.weight", "out_head.bias"}
    qkv = model.backbone.trf_blocks[0].att.qkv
    assert qkv.lora_A.shape == (4, 64) and qkv.lora_B.shape == (192, 4)
    # The base weights keep their names, so the base state dict still loads into a LoRA model.
    assert "trf_blocks.0.att.qkv.weight" in model.backbone.state_dict()


def test_unknown_target_lists_the_valid_ones(tiny_gpt2: Path) -> None:
    bb = load_backbone(str(tiny_gpt2))
    with pytest.raises(GptclfError) as e:
        apply_lora(bb.model, LoRAConfig(targets=parse_targets("att.q_proj,ff.fc")))
    assert "att.q_proj" in e.value.message and "att.qkv" in e.value.hint and "ff.proj" in e.value.hint
    with pytest.raises(GptclfError, match="rank"):
        LoRAConfig(rank=0)


def test_llama_targets_are_the_fused_projections() -> None:
    from gptclf.peft.lora import valid_targets
    from gptclf.models.llama import LlamaConfig, LlamaModel

    m = LlamaModel(LlamaConfig(vocab_size=64, emb_dim=32, n_heads=4, n_kv_heads=2, n_layers=2, hidden_dim=48))
    assert valid_targets(m) == ["att.out_proj", "att.qkv", "ff.fc", "ff.proj"]
    assert apply_lora(m, LoRAConfig(rank=2)) == 8


def gptclf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gptclf", *args], capture_output=True, text=True,
                          env=env_with(HF_HUB_OFFLINE="1"), timeout=600)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, small_sms: Path, tiny_gpt2: Path) -> Path:
    out = tmp_path_factory.mktemp("runs") / "lora"
    r = gptclf("train", "--model", str(tiny_gpt2), "--data", str(small_sms), "--trainable", "lora",
               "--lora-rank", "8", "--lr", "2e-3", "--epochs", "2", "--eval-freq", "10", "--quiet",
               "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "trunk cache off: LoRA" in r.stderr and "memory estimate:" in r.stderr
    return out


def test_lora_run_trains_saves_small_and_predicts(lora_run: Path, tiny_gpt2: Path) -> None:
    hist = json.loads((lora_run / "history.json").read_text())
    losses = [s["train_loss"] for s in hist["steps"]]
    assert min(losses[-3:]) < losses[0] - 0.1, losses  # the loss goes down
    m = json.loads((lora_run / "metrics.json").read_text())
    assert m["trunk_cache"] == "off" and m["test_accuracy"] > 0.7
    cfg = json.loads((lora_run / "config.json").read_text())
    assert cfg["lora"]["rank"] == 8 and cfg["lora"]["alpha"] == 16
    assert set(cfg["lora"]) == {"rank", "alpha", "targets", "dropout"}  # the base is named once, in base_weights
    assert cfg["weights"] == "trained-only"
    assert cfg["base_weights"]["fingerprint"]["parameters"] > 0
    assert cfg["base_model"]["name"] == str(tiny_gpt2) and cfg["base_model"]["init"] == "pretrained"
    assert cfg["base_weights"]["name"] == str(tiny_gpt2.resolve())
    saved = load_file(str(lora_run / "model.safetensors"))
    assert all(".lora_" in k or k.startswith(("out_head.", "final_norm.")) for k in saved)
    assert m["trainable_parameters"] == sum(t.numel() for t in saved.values())
    # Much smaller than the full classifier (embeddings + blocks) would be.
    full_bytes = 4 * m["total_parameters"]
    assert (lora_run / "model.safetensors").stat().st_size < full_bytes / 10

    r = gptclf("predict", "--model", str(lora_run), "--json", "WINNER!! Claim your prize now", "see you at 6")
    assert r.returncode == 0, r.stderr
    via_cli = [json.loads(x)["scores"] for x in r.stdout.splitlines()]
    clf = Classifier.load(lora_run)
    assert not any(isinstance(mod, LoRALinear) for mod in clf.model.modules())  # merged for inference
    for a, b in zip(via_cli, clf.predict(["WINNER!! Claim your prize now", "see you at 6"])):
        assert a == pytest.approx(b["scores"], abs=1e-6)


def test_export_merge_writes_a_self_contained_directory(lora_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    r = gptclf("export", "--merge", str(lora_run), str(out))
    assert r.returncode == 0, r.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert "lora" not in cfg and cfg["lora_merged"]["rank"] == 8
    assert (out / "model.safetensors").stat().st_size > 10 * (lora_run / "model.safetensors").stat().st_size
    assert not (tmp_path / "latest").exists()  # an export does not move runs/latest
    texts = ["WINNER!! Claim your prize now", "Ok lar... Joking wif u oni...", "call me later"]
    a = Classifier.load(lora_run).predict_proba(texts)
    b = Classifier.load(out).predict_proba(texts)
    assert abs(a - b).max() < 1e-6


def test_a_different_base_model_is_refused(lora_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(lora_run, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["base_weights"]["fingerprint"]["sha256_sample"] = "0" * 64
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GptclfError, match="fingerprint"):
        Classifier.load(copy)
    cfg["base_weights"]["name"] = str(tmp_path / "gone")
    (copy / "config.json").write_text(json.dumps(cfg))
    r = gptclf("predict", "--model", str(copy), "hello")
    assert r.returncode == 2 and "LoRA adapters for the base model" in r.stderr and "Traceback" not in r.stderr


def test_a_lora_run_in_the_older_spelling_still_loads(lora_run: Path, tmp_path: Path) -> None:
    """LoRA directories written before base_weights named every base: no ``weights``, the base in
    ``lora.base`` and ``lora.base_fingerprint``."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(lora_run, old)
    cfg = json.loads((old / "config.json").read_text())
    ref = cfg.pop("base_weights")
    del cfg["weights"]
    cfg["lora"].update(base=ref["name"], base_fingerprint=ref["fingerprint"])
    (old / "config.json").write_text(json.dumps(cfg))
    texts = ["WINNER!! Claim your prize now", "Ok lar... Joking wif u oni...", "call me later"]
    clf = Classifier.load(old)
    assert clf.run_config.weights == "trained-only" and clf.run_config.base_weights == ref
    assert "base" not in clf.run_config.lora
    assert (clf.predict_proba(texts) == Classifier.load(lora_run).predict_proba(texts)).all()
    cfg["lora"]["base_fingerprint"]["sha256"] = "0" * 64  # and it is checked as before
    (old / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GptclfError, match="fingerprint mismatch"):
        Classifier.load(old)


def test_random_base_saves_the_merged_model(tmp_path: Path, small_sms: Path) -> None:
    tiny = write_gpt2_config_only(tmp_path / "cfg", n_layer=2)
    out = run_training(TrainConfig(model=str(tiny), init="random", data=str(small_sms), trainable="lora",
                                   epochs=1, eval_freq=100, progress=False, out=str(tmp_path / "r")),
                       log=lambda s: None)
    cfg = json.loads((out / "config.json").read_text())
    assert "lora" not in cfg and cfg["trainable"] == "lora"
    clf = Classifier.load(out)
    m = json.loads((out / "metrics.json").read_text())
    assert clf.evaluate(["free prize call now"], ["spam"])["n"] == 1 and m["trainable_parameters"] > 0


def test_bad_lora_options_fail_before_any_data_is_read() -> None:
    with pytest.raises(GptclfError, match="--lora-alpha"):
        TrainConfig(trainable="lora", lora_alpha=0, data="/nonexistent.csv").resolved()
    with pytest.raises(GptclfError, match="--lora-dropout"):
        TrainConfig(trainable="lora", lora_dropout=1.0).resolved()
    assert TrainConfig(trainable="last_block", lora_rank=0).resolved().lora_rank == 0  # unused: ignored
