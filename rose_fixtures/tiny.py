"""Tiny causal LMs and word-level tokenizers built offline, for tests, the demo and the benchmarks.

Nothing here downloads anything: the tokenizer is a `tokenizers.models.WordLevel` over a vocabulary you pass, wrapped
in `PreTrainedTokenizerFast` with a chat template; models are built from config with random weights.

Example:
```python
>>> from rose_fixtures.tiny import build_tokenizer, build_model
>>> tok = build_tokenizer(["hello", "world"])
>>> model = build_model("llama", tok, hidden_size=32, num_layers=2)
```
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]

# A minimal ChatML-like template. `{% generation %}` marks assistant tokens so TRL's `assistant_only_loss` works.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|> "
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }} <|end|>{% endgeneration %}"
    "{% else %}{{ message['content'] }} <|end|>{% endif %} "
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)

PUNCTUATION = list(".,:;?!()[]+-*/=<>'\"#")


def build_tokenizer(words: list[str] | set[str], chat_template: str | None = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `words` plus digits, punctuation and special tokens.

    Args:
        words: the vocabulary (order does not matter: it is sorted so the same words give the same ids).
        chat_template: Jinja chat template; `None` to leave the tokenizer without one.
    """
    vocab_words = sorted(set(words) | set("0123456789") | set(PUNCTUATION) - set(SPECIAL_TOKENS))
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + vocab_words)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Split on whitespace, then isolate punctuation and single digits, so numbers and code-like text tokenize
    # without a huge vocabulary.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def build_model(
    architecture: str,
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
):
    """A randomly initialised causal LM built from config.

    Args:
        architecture: `"llama"`, `"qwen2"` or `"gpt2"`.
        tokenizer: sets the vocabulary size and the special token ids.
        attn_implementation: `"sdpa"` or `"eager"`.
    """
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    intermediate_size = intermediate_size or 4 * hidden_size
    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if architecture in ("llama", "qwen2"):
        config_cls = LlamaConfig if architecture == "llama" else Qwen2Config
        config = config_cls(
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=max(1, num_heads // 2),
            max_position_embeddings=max_position_embeddings,
            tie_word_embeddings=architecture == "qwen2",
            **ids,
        )
    elif architecture == "gpt2":
        config = GPT2Config(
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_inner=intermediate_size,
            n_positions=max_position_embeddings,
            **ids,
        )
    else:
        raise ValueError(f"architecture={architecture!r} is not one of 'llama', 'qwen2', 'gpt2'.")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    model.config._name_or_path = f"rose_hf-tiny-{architecture}-h{hidden_size}-l{num_layers}"
    return model


def lora_target_modules(architecture: str) -> list[str]:
    """The attention projections LoRA targets in the paper (q, k, v, o), named as each architecture names them."""
    if architecture == "gpt2":
        return ["c_attn", "c_proj"]
    return ["q_proj", "k_proj", "v_proj", "o_proj"]
