"""A model on a tokenizer of its own, made from a byte-level BPE model: the vocabulary cut to its first
ids. BPE vocabularies list their merges in the order they were learned and number each merged token
after the tokens it joins, so the first `vocab` ids with the merges that make them are a complete BPE
of their own: it splits the same text into more, shorter tokens. Every kept id keeps its embedding
row (and LM-head row), so the model still knows each token it can see; what it has never seen is
words written in the shorter pieces. That is what cross-tokenizer distillation has to teach it
(train/cross_vocab.py), measured on the embedded pair in docs/distillation.md.
"""
import json
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from studyhall.config import ConfigError


def cut_bpe(tokenizer_json: dict, vocab: int) -> dict:
    """A tokenizer.json's BPE cut to ids below `vocab`: those tokens, and the merges that make them."""
    model = tokenizer_json["model"]
    if model.get("type") != "BPE":
        raise ConfigError(f"a {model.get('type')} tokenizer: retokenize cuts byte-level BPE vocabularies only")
    beyond = [t for t in tokenizer_json.get("added_tokens", []) if t["id"] >= vocab]
    if beyond:
        last = max(tokenizer_json["added_tokens"], key=lambda t: t["id"])
        raise ConfigError(f"--vocab {vocab}: the special token {beyond[0]['content']!r} has id {beyond[0]['id']}; "
                          f"keep at least {last['id'] + 1} ids (the last special token, {last['content']!r}, has id {last['id']})")
    kept = {token: i for token, i in model["vocab"].items() if i < vocab}
    merges = []
    for merge in model["merges"]:
        left, right = merge if isinstance(merge, list) else merge.split(" ")
        if left in kept and right in kept and left + right in kept:
            merges.append(merge)
    return {**tokenizer_json, "model": {**model, "vocab": kept, "merges": merges}}


def retokenized(source: str, vocab: int, out: str | Path) -> dict:
    """Write OUT: `source` (an HF folder) with its vocabulary cut to `vocab` ids; returns what changed."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: exists and is not empty; choose a new folder")
    tokenizer = AutoTokenizer.from_pretrained(source)
    if not 0 < vocab < len(tokenizer):
        raise ConfigError(f"--vocab {vocab}: must be below the tokenizer's {len(tokenizer)} ids")
    tokenizer.save_pretrained(out)
    path = out / "tokenizer.json"
    path.write_text(json.dumps(cut_bpe(json.loads(path.read_text()), vocab), ensure_ascii=False))
    model = AutoModelForCausalLM.from_pretrained(source)
    model.resize_token_embeddings(vocab)  # keeps rows 0..vocab-1, the LM head with them
    model.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    cut = AutoTokenizer.from_pretrained(out)
    return {"source": source, "vocab_before": len(tokenizer), "vocab_after": len(cut), "out": str(out)}
