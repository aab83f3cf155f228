"""Untrusted model directories: nothing is unpickled; each kind of bad directory is one GptclfError.

Config and weights that disagree, absurd sizes, tokenizer paths that leave the directory,
damaged or lying safetensors.
"""

from __future__ import annotations

import json
import re
import struct
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptclf.errors import GptclfError
from gptclf.inference.classifier import Classifier

from helpers import SRC, examples, random_classifier, write_gpt2_config_only, write_run

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest on one thread


UNSAFE = [
    (re.compile(r"\bimport\s+pickle\b|\bfrom\s+pickle\b|\bpickle\.load"), "pickle"),
    (re.compile(r"\bimport\s+(c?pickle|dill|joblib|shelve|marshal)\b"), "an unpickler"),
    (re.compile(r"allow_pickle\s*=\s*True"), "np.load(allow_pickle=True)"),
]


def test_source_never_unpickles() -> None:
    """Scan src/: no pickle, every torch.load has weights_only=True, every np.load allow_pickle=False."""
    found = []
    for f in sorted(SRC.rglob("*.py")):
        text = f.read_text(encoding="utf-8")
        for pattern, what in UNSAFE:
            for m in pattern.finditer(text):
                found.append(f"{f.name}:{text[: m.start()].count(chr(10)) + 1}: {what}")
        for call in ("torch.load(", "np.load(", "numpy.load("):
            start = 0
            while (i := text.find(call, start)) >= 0:
                depth, j = 0, i + len(call) - 1
                while j < len(text):  # the call's full argument list, over several lines
                    depth += {"(": 1, ")": -1}.get(text[j], 0)
                    if depth == 0:
                        break
                    j += 1
                args = text[i: j + 1]
                ok = "weights_only=True" in args if call == "torch.load(" else "allow_pickle=False" in args
                if not ok:
                    found.append(f"{f.name}:{text[:i].count(chr(10)) + 1}: {args[:60]}")
                start = j
    assert not found, found
    assert len(list(SRC.rglob("*.py"))) > 10  # the scan did look at the package


def test_config_and_weights_that_disagree_are_refused(tmp_path: Path, random_run: Path) -> None:
    import shutil

    def variant(name: str, edit) -> Path:
        d = tmp_path / name
        shutil.copytree(random_run, d)
        cfg = json.loads((d / "config.json").read_text())
        edit(cfg)
        (d / "config.json").write_text(json.dumps(cfg))
        return d

    cases = [
        (lambda c: c["architecture"].update(emb_dim=32), "disagree: shape mismatch"),
        (lambda c: c["architecture"].update(n_layers=2), "disagree: missing tensors"),
        (lambda c: c.update(labels=["a", "b", "c"]), "out_head.weight: file (2, 16) vs config (3, 16)"),
        (lambda c: c["architecture"].update(vocab_size=1000), "disagree"),
        (lambda c: c.update(max_length=64), "longer than the model's context of 32"),
        (lambda c: c.update(labels=["a", "a"]), "distinct"),
        (lambda c: c.update(pooling="median"), "pooling 'median'"),
        (lambda c: c.update(max_length="32"), "max_length '32'"),
        (lambda c: c["architecture"].update(surprise=1), "unexpected keyword argument 'surprise'"),
        (lambda c: c["architecture"].update(n_heads=3), "not a multiple of n_heads"),
        (lambda c: c["architecture"].update(emb_dim=-16), "emb_dim=-16"),
        (lambda c: c["architecture"].update(n_layers=True), "n_layers=True"),
        (lambda c: c["architecture"].update(arch="mamba"), "unknown architecture 'mamba'"),
        (lambda c: c.update(architecture=[1, 2]), "must be a JSON object"),
    ]
    for i, (edit, msg) in enumerate(cases):
        with pytest.raises(GptclfError) as e:
            Classifier.load(variant(f"v{i}", edit))
        assert msg in str(e.value), (i, str(e.value))


def test_vocabulary_smaller_than_the_tokenizer_is_refused(tmp_path: Path) -> None:
    small = write_gpt2_config_only(tmp_path / "small", vocab_size=1000, n_positions=32, n_embd=16, n_layer=1,
                                   n_head=2)
    model = random_classifier(small)
    run = write_run(tmp_path / "run", model)
    with pytest.raises(GptclfError, match="the tokenizer has 50257 tokens but the model's embedding only 1000"):
        Classifier.load(run)


def test_absurd_sizes_are_refused_before_allocating(tmp_path: Path, random_run: Path) -> None:
    import resource
    import shutil

    d = tmp_path / "huge"
    shutil.copytree(random_run, d)
    cfg = json.loads((d / "config.json").read_text())
    # ~20 TB of weights: each size is allowed on its own, together they are absurd.
    cfg["architecture"].update(emb_dim=65536, n_heads=64, n_layers=100, context_length=1 << 20)
    (d / "config.json").write_text(json.dumps(cfg))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(GptclfError, match="disagree"):
        Classifier.load(d)
    # The same sizes as a backbone to train from scratch: refused by the memory check.
    hf = write_gpt2_config_only(tmp_path / "hf", n_embd=65536, n_head=64, n_layer=100)
    from gptclf.loading import load_backbone

    with pytest.raises(GptclfError, match=r"needs \d+\.\d GiB for its weights, more than"):
        load_backbone(str(hf), init="random")
    write_gpt2_config_only(tmp_path / "hf2", vocab_size=10**12)
    with pytest.raises(GptclfError, match="vocab_size=1000000000000 is not an integer between"):
        load_backbone(str(tmp_path / "hf2"), init="random")
    assert time.perf_counter() - t0 < 30
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 512 * 1024  # KiB: nothing big allocated


def test_tokenizer_paths_in_config_cannot_leave_the_directory(tmp_path: Path, random_run: Path) -> None:
    import shutil

    pytest.importorskip("tokenizers")
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    for i, file in enumerate(["../secret.json", str(secret), "..", "sub/tokenizer.json", "a\\..\\b", 7]):
        d = tmp_path / f"t{i}"
        shutil.copytree(random_run, d)
        cfg = json.loads((d / "config.json").read_text())
        cfg["tokenizer"] = {"type": "hf-tokenizers", "file": file, "pad_id": 0}
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(GptclfError, match="is not a plain file name"):
            Classifier.load(d)
    cfg["tokenizer"] = {"type": "hf-tokenizers", "file": "tokenizer.json", "pad_id": -1}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GptclfError, match="pad_id -1 is not a token id"):
        Classifier.load(d)


def _load_or_gptclf_error(run: Path) -> bool:
    try:
        Classifier.load(run)
        return True
    except GptclfError:
        return False


@settings(max_examples=examples(25))
@given(data=st.data())
def test_damaged_safetensors_is_a_gptclf_error(random_run: Path, data) -> None:
    import shutil
    import tempfile

    raw = (random_run / "model.safetensors").read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    kind = data.draw(st.sampled_from(["truncate", "flip-header", "flip-length"]))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "run"
        shutil.copytree(random_run, d)
        b = bytearray(raw)
        if kind == "truncate":
            b = b[: data.draw(st.integers(0, len(raw) - 1))]
        elif kind == "flip-header":
            for _ in range(data.draw(st.integers(1, 4))):
                i = data.draw(st.integers(8, 8 + header_len - 1))
                b[i] ^= data.draw(st.integers(1, 255))
        else:
            b[data.draw(st.integers(0, 7))] ^= data.draw(st.integers(1, 255))
        (d / "model.safetensors").write_bytes(bytes(b))
        ok = _load_or_gptclf_error(d)  # any other exception fails the test
        if kind != "flip-header":
            assert not ok  # a flipped header byte may land in harmless metadata; the others never load


def test_safetensors_header_claiming_huge_sizes(tmp_path: Path, random_run: Path) -> None:
    import shutil

    for shape, end in ([10**9, 10**9], 4 * 10**18), ([16, 16], 2**62), ([2**40], 2**42):
        d = tmp_path / f"h{len(list(tmp_path.iterdir()))}"
        shutil.copytree(random_run, d)
        header = json.dumps({"tok_emb.weight": {"dtype": "F32", "shape": shape, "data_offsets": [0, end]}}).encode()
        (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
        with pytest.raises(GptclfError, match="not a valid safetensors file"):
            Classifier.load(d)
    d = tmp_path / "len"
    shutil.copytree(random_run, d)
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(GptclfError, match="not a valid safetensors file"):
        Classifier.load(d)


def test_model_directory_whose_config_and_weights_disagree_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tiny_run
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["labels"] = ["a", "b", "c"]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GptclfError, match="config.json and model.safetensors disagree"):
        Classifier.load(bad)
    (bad / "config.json").write_text((run / "config.json").read_text())
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(GptclfError, match="not a valid safetensors file"):
        Classifier.load(bad)
