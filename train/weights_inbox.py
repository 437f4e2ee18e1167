"""The student generation actor's inbox for the trainer's weights.

A push only leaves the packet here (`put`), so it never waits for generation; the rollout applies it
(`apply`) when the student is between batches, so no batch mixes two sets of weights. The applied
packet is kept for a restarted student actor to take again.
"""
import threading
import time

import ray

from actors.weights import Packet


class WeightsInbox:
    def __init__(self, student, revival, settings):
        """`settings`: the engine settings a restarted actor is configured with (actors/revival.py)."""
        self.student, self.revival, self.settings = student, revival, settings
        self.lock = threading.Lock()
        self.pushed: tuple | None = None  # (ObjectRef, Packet) not yet applied
        self.applied: Packet | None = None
        self.step = 0  # the optimizer step of the student's weights
        self.counts = {"weight_loads": 0, "weight_load_seconds": 0.0, "weight_packet_mb": 0.0}
        revival.on_restart.append(self._restore)

    def put(self, sent: list) -> int:
        """`[ref]`, the ObjectRef of an actors.weights.Packet the trainer put (in a list, so Ray hands
        over the reference and the arrays stay where they are). Returns the packet's step."""
        ref = sent[0]
        packet = ray.get(ref)  # no copy: the arrays are read where the trainer put them
        with self.lock:
            self.pushed = (ref, packet)
        return packet.step

    def apply(self) -> None:
        """Give the student the last pushed weights, if it does not have them yet."""
        with self.lock:
            pushed, self.pushed = self.pushed, None
        if pushed is None:
            return
        started = time.perf_counter()
        ref, packet = pushed
        self.revival.call(self.settings, lambda: self._load(ref, packet))
        # Held here, the arrays stay in the object store after the trainer that put them ends (its
        # reference dies with it): a restarted student takes them again, e.g. for the after-evaluation.
        self.applied, self.step = packet, packet.step
        self.counts["weight_loads"] += 1
        self.counts["weight_load_seconds"] += time.perf_counter() - started
        self.counts["weight_packet_mb"] = packet.nbytes / 2 ** 20

    def _load(self, ref, packet: Packet) -> None:
        """The student loads the packet straight from the trainer's object, with no copy made here; or,
        once that object is lost with its owner (a trainer worker that ended, on another node), from
        the arrays held here (Ray puts a copy of them for the call)."""
        try:
            ray.get(self.student.load_weights.remote(ref))
        except ray.exceptions.ObjectLostError:
            ray.get(self.student.load_weights.remote(packet))

    def _restore(self, role: str, actor) -> None:
        if role == "student" and self.applied is not None:
            ray.get(actor.load_weights.remote(self.applied))
