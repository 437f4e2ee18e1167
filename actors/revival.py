"""Bringing a lost teacher or student actor back into a run.

Ray restarts a model actor whose process died (`max_restarts`, set by pair.start_pair): the new
process runs the constructor again, so the model, the run's settings, its KV batches and any pushed
weights are gone. Calls in flight on it, and calls sent while it restarts, fail with RayActorError.
`Revival` waits until each actor answers again, has a restarted one load its model and take the run's
settings and weights back, and clears every actor's batches, so the caller can rebuild them from the
committed tokens. Everything it does can be done twice, so a death during a revival is survived too.
"""
import dataclasses
import time

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from studyhall.config import SwitchConfig

FRESH_STREAM = 7919  # seed offset per restart


class Restarted(RayActorError):
    """A model actor was asked to work without its model: Ray restarted it between two calls, with none
    in flight to fail. Being a RayActorError, it is revived like an actor lost mid-call."""

    def __init__(self, role: str):
        super().__init__(error_msg=f"the {role} actor restarted and has not loaded its model again yet")


class ActorLost(RuntimeError):
    """A model actor died and did not come back: Ray would not restart it, or could not place it in time."""


class Revival:
    def __init__(self, actors: dict, max_restarts: int, timeout_s: float):
        self.actors = actors  # role -> handle
        self.max_restarts, self.timeout_s = max_restarts, timeout_s
        self.restarts = {role: 0 for role in actors}
        self.seconds = 0.0  # spent waiting for restarts, reloading and re-applying state
        # (role, handle) -> None: what a restarted actor needs beyond its model and settings,
        # e.g. the trained weights the rollout pushed to the student.
        self.on_restart: list = []

    @classmethod
    def for_pair(cls, teacher, student, cfg) -> "Revival":
        return cls({"teacher": teacher, "student": student}, cfg.max_restarts, cfg.restart_timeout_s)

    def revive(self, switch: SwitchConfig) -> None:
        """Wait for every actor to answer with its model loaded; restarted ones take `switch` and the
        restore hooks. Every actor's batches are dropped."""
        started = time.perf_counter()
        deadline = started + self.timeout_s
        for role, actor in self.actors.items():
            if self._load(role, actor, deadline):
                self.restarts[role] += 1
                # a fresh random stream: replaying the one it had would reuse draws already made
                ray.get(actor.configure.remote(dataclasses.replace(switch, seed=switch.seed + FRESH_STREAM * self.restarts[role])))
                for hook in self.on_restart:
                    hook(role, actor)
        ray.get([actor.reset.remote() for actor in self.actors.values()])
        self.seconds += time.perf_counter() - started

    def _load(self, role: str, actor, deadline: float) -> bool:
        """True when the actor had lost its model (it restarted) and loaded it again."""
        while True:
            left = deadline - time.perf_counter()
            try:
                if left <= 0:
                    raise GetTimeoutError()
                return ray.get(actor.load.remote(), timeout=left)["fresh"]
            except ActorUnavailableError:  # restarting: Ray has not brought the process back yet
                time.sleep(min(0.2, max(left, 0)))
            except GetTimeoutError:
                raise ActorLost(f"the {role} actor did not come back within restart_timeout_s={self.timeout_s:g} s "
                                "(Ray could not place it again, or its model did not load in time)") from None
            except RayActorError:  # ActorDiedError: dead for good
                raise ActorLost(f"the {role} actor died and Ray will not restart it again "
                                f"(max_restarts={self.max_restarts}; {self.restarts[role]} restart(s) survived in this run)") from None

    def call(self, switch: SwitchConfig, work):
        """`work()` (stateless model calls, e.g. scoring fixed sequences), done again after a revival
        for as long as the actors come back; Ray's max_restarts bounds the tries."""
        while True:
            try:
                return work()
            except RayActorError:
                self.revive(switch)

    def summary(self) -> dict:
        return {"restarts": dict(self.restarts), "restart_seconds": round(self.seconds, 2)}
