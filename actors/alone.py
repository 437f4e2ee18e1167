"""One model answering alone: HF `generate` on its actor (LMWorker.generate_alone), with no other
model drafting or scoring. What answers across tokenizers and the unlikelihood term's greedy answers
are made with."""
import ray

from actors.revival import Revival
from studyhall.config import SwitchConfig


def answer_alone(revival: Revival, actor, prompts: list[list[int]], eos: list[int], settings: SwitchConfig) -> list[list[int]]:
    """`actor`'s answer to each prompt (token ids, ended by one of `eos` or cut at the settings' answer
    budget), configured with `settings` first; a restart mid-call is revived and the call repeated."""

    def write():
        ray.get(actor.configure.remote(settings))
        return ray.get(actor.generate_alone.remote(prompts, eos))

    return revival.call(settings, write)
