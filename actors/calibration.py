"""Calibration text for pruning: token sequences of prompt + answer, the answer the model's own or given.

The model's own greedy answers show the layers at work on the text it writes, the text a distilled
student must learn to write (and need no data). Prompts are rendered with the chat template.
"""
import torch

from studyhall.prompts import render

ANSWER_TOKENS = 64  # per calibration answer: enough to cover the start of an answer, cheap to generate
MAX_TOKENS = 512  # a calibration sequence is cut here, so long data rows cost no more than a long answer


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    # The rendered template already holds its special tokens; adding them again would double BOS.
    return tokenizer(render(tokenizer, messages), add_special_tokens=False)["input_ids"]


def with_reference(tokenizer, messages: list[dict], answer: str, answer_tokens: int = ANSWER_TOKENS) -> list[int]:
    """Prompt + a given answer, the answer cut to `answer_tokens` like a generated one."""
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"][:answer_tokens]
    return _prompt_tail(prompt_ids(tokenizer, messages), answer_tokens) + answer_ids


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[list[dict]], answer_tokens: int = ANSWER_TOKENS, batch_size: int = 8) -> list[list[int]]:
    """Prompt + the model's greedy answer (up to its first EOS, kept), for each chat prompt; batched, left-padded."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = _stop_ids(model, tokenizer)
    device = next(model.parameters()).device
    sequences = []
    for first in range(0, len(prompts), batch_size):
        batch = [_prompt_tail(prompt_ids(tokenizer, messages), answer_tokens) for messages in prompts[first:first + batch_size]]
        width = max(map(len, batch))
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=answer_tokens,
                             do_sample=False, pad_token_id=pad)
        for ids, new in zip(batch, out[:, width:].tolist()):
            ends = [i for i, token in enumerate(new) if token in stop]
            sequences.append(ids + new[: ends[0] + 1 if ends else len(new)])
    return sequences


def _prompt_tail(ids: list[int], answer_tokens: int) -> list[int]:
    """A long prompt keeps its end, where the question and the opened assistant turn are, leaving room for the answer."""
    return ids[-(MAX_TOKENS - answer_tokens):]


def _stop_ids(model, tokenizer) -> set[int]:
    """The EOS ids generate stops at: the generation config's (chat models list several) and the tokenizer's."""
    listed = model.generation_config.eos_token_id
    ids = set(listed if isinstance(listed, list) else [listed]) | {tokenizer.eos_token_id}
    return {i for i in ids if i is not None}


def batches(sequences: list[list[int]], batch_size: int = 8, device: torch.device | str = "cpu"):
    """(input_ids, attention_mask) pairs, right-padded: causal attention keeps padding out of the real tokens."""
    for first in range(0, len(sequences), batch_size):
        batch = sequences[first:first + batch_size]
        width = max(map(len, batch))
        input_ids = torch.tensor([ids + [0] * (width - len(ids)) for ids in batch], device=device)
        attention_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in batch], device=device)
        yield input_ids, attention_mask
