"""Where the node's cores go over a training step: CPU seconds by process role, read from every
process on the node at the step's end (psutil), and the share of the node's core-seconds busy.

On a CPU-only machine the trainer, the teacher and student actors, and Ray's own processes share the
cores. A forward-backward slower beside the generation actors than alone either waits for a core or
runs slower on one; a step that cannot get shorter is one whose processes keep every core busy. Only
rank 0's node is read: on a cluster the other nodes' processes are not in it.
"""
import psutil

# a process's role by the start of its title: Ray names an actor's process after its class
ROLES = (("ray::RayTrainWorker", "trainer"), ("ray::TeacherActor", "teacher"), ("ray::StudentActor", "student"),
         ("ray::Rollout", "rollout"), ("ray::", "ray_actors"))  # the last: Ray Train's controller actors, Ray's agents, idle workers
RAY_SYSTEM = ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env")


def role_of(cmdline: list[str]) -> str:
    title = " ".join(cmdline)
    for prefix, role in ROLES:
        if title.startswith(prefix):
            return role
    return "ray_system" if any(name in title for name in RAY_SYSTEM) else "other"


class NodeCores:
    """`take()`: the CPU seconds each role's processes used since the last take, and the node's busy share.

    The busy share is psutil's own (`cpu_percent(interval=None)`: the node's CPU times since its last
    call, guest time not counted twice, idle and I/O wait as idle). Ray Train and DeepSpeed do not
    call it in the trainer process, so its last call is this reader's last take."""

    def __init__(self, busy_percent=psutil.cpu_percent, processes=psutil.process_iter):
        self.busy_percent, self.processes = busy_percent, processes
        busy_percent(interval=None)  # starts the window the first take measures
        self.seen = self._read()

    def _read(self) -> dict[int, tuple[str, float]]:
        """pid -> (role, CPU seconds so far) for every process on the node still readable."""
        read = {}
        for p in self.processes(["cmdline", "cpu_times"]):
            times = p.info["cpu_times"]
            if times is not None:  # gone, or not ours to read
                read[p.pid] = (role_of(p.info["cmdline"] or []), times.user + times.system)
        return read

    def take(self) -> dict:
        share, seen = self.busy_percent(interval=None) / 100, self._read()
        by_role: dict[str, float] = {}
        for pid, (role, cpu) in seen.items():
            _, before = self.seen.get(pid, (role, 0.0))  # a process started since: all of its time is new
            by_role[role] = by_role.get(role, 0.0) + max(cpu - before, 0.0)
        self.seen = seen
        return {"node_busy_share": round(share, 4), "cpu_by_role": {r: round(s, 4) for r, s in sorted(by_role.items())}}
