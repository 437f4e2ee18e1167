"""What the held-out evaluation asks of the generation side: student samples, greedy answers (the
student's, or the teacher's as the yardstick), the full-vocabulary KL on the references, and what
reusing generation's teacher log-probs saved. It runs inside the rollout actor, beside the models; the
driver (train/distill.py's evaluate) turns the answers into figures. Nothing here is training data,
so none of it is counted in the run's generation figures (train/records.py)."""
import ray

from studyhall.record import Record
from train.data import Example
from train.records import RecordMaker, sample_settings

# Response positions per chunk of full teacher distributions on their way to the student actor.
KL_CHUNK_POSITIONS = 256


class Evaluator:
    def __init__(self, records: RecordMaker):
        self.records = records
        self.cfg, self.tokenizer = records.cfg, records.tokenizer

    def sample_student(self, examples: list[Example], samples: int, seed: int) -> list[dict]:
        """`samples` student answers per example (sampled at T = 1, so teacher log-probs are the true NLL)."""
        settings = sample_settings(self.cfg, "student", seed, temperature=1.0, top_p=1.0, sample=True)
        references = self.records.reference(examples)
        repeated = [e for e in examples for _ in range(samples)]
        answers = self.records.run_engine("student", repeated, seed, settings)
        by_id = {e.id: (text, self.records.reference_tokens(text)) for e, text in zip(examples, references)}
        return [{"prompt_id": r.prompt_id, "prediction": self._text(r), "reference": by_id[r.prompt_id][0],
                 "reference_tokens": by_id[r.prompt_id][1], "teacher_logprob": r.teacher_logprob} for r in answers]

    def greedy_answers(self, examples: list[Example], role: str = "student") -> list[dict]:
        """One greedy answer per example from `role` ("student" or "teacher"), as a user's
        `generate(do_sample=False)` writes it, with the teacher's log-probs of its tokens at T = 1
        (so their mean is the teacher's NLL of the answer), in the same form as sample_student's."""
        settings = sample_settings(self.cfg, role, self.cfg.seed, temperature=1.0, top_p=1.0, sample=False)
        references = self.records.reference(examples)
        answers = self.records.run_engine(role, examples, self.cfg.seed, settings)
        return [{"prompt_id": e.id, "prediction": self._text(r), "reference": text,
                 "reference_tokens": self.records.reference_tokens(text), "teacher_logprob": r.teacher_logprob}
                for e, text, r in zip(examples, references, answers)]

    def _text(self, record: Record) -> str:
        return self.tokenizer.decode(record.token_ids, skip_special_tokens=True).strip()

    def heldout_kl(self, examples: list[Example]) -> list[dict]:
        """Full-vocabulary KL(teacher || student) and top-1 agreement on each example's reference
        (as training sees it: cut to the answer budget, ended by EOS), with the generation actor's
        weights of this moment. Per reference: {"prompt_id", "reference_tokens", "tokens", "kl_sum", "top1"}.

        The teacher's distributions go straight to the student actor, a chunk at a time (each ref is
        ~50 MB at a 49k vocabulary), the teacher working on the next chunk while the student uses one;
        only the sums come back here. Across tokenizers the full-vocabulary KL is not defined: none."""
        if self.records.cross:
            return []
        references = self.records.data_records(examples, with_teacher=False)
        chunks, size = [[]], 0
        for r in references:
            if chunks[-1] and size + len(r.token_ids) > KL_CHUNK_POSITIONS:
                chunks.append([])
                size = 0
            chunks[-1].append((r.prompt_token_ids, r.token_ids))
            size += len(r.token_ids)
        teacher, student = self.records.teacher, self.records.student

        def kl_sums():
            sums, in_flight = [], []
            for chunk in chunks:
                teacher_logp = teacher.full_logprobs.remote(chunk)
                in_flight.append(student.kl_from.remote(chunk, teacher_logp))
                if len(in_flight) == 2:  # at most two chunks' distributions in the object store at once
                    sums += ray.get(in_flight.pop(0))
            for ref in in_flight:
                sums += ray.get(ref)
            return sums

        sums = self.records.revival.call(self.records.settings, kl_sums)
        texts = self.records.reference(examples)
        return [{"prompt_id": e.id, "reference_tokens": self.records.reference_tokens(text), **s}
                for e, text, s in zip(examples, texts, sums)]

    def measure_second_pass(self, batch: list[Record]) -> dict:
        """What reusing generation's teacher log-probs saves: rescore some records with a plain teacher
        pass, time it, and check the recorded log-probs equal the rescored ones."""
        if not batch or not batch[0].teacher_logprob or self.records.cross:  # across tokenizers every record has its pass
            return {}
        rescored, seconds = self.records.score_with_teacher(batch)
        positions = sum(len(r.token_ids) for r in batch)
        diff = max(abs(a - b) for r, s in zip(batch, rescored) for a, b in zip(r.teacher_logprob, s["teacher_logprob"]))
        per_position = seconds / max(positions, 1)
        return {"second_pass_seconds_per_position": round(per_position, 6),
                "recorded_vs_rescored_max_abs_diff": round(diff, 5),
                "saved_seconds_estimate": round(per_position * self.records.counts["reused_positions"], 2)}
