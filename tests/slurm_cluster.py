"""A real single-node SLURM cluster on this machine, for the cluster tests: munged, slurmctld and slurmd
(Debian packages slurm-wlm and munge), as root, on loopback, all state under one temp directory.

The config is also linked at the default path, /etc/slurm/slurm.conf, as on a real cluster: the Snakemake
job-step plugin runs its inner ``srun`` with every SLURM_* variable but a few removed, SLURM_CONF included,
so a config elsewhere would not be found inside jobs. An existing config there is never replaced."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def unavailable_reason() -> str | None:
    """Why a cluster cannot be started here, or None."""
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol") if not shutil.which(b)]
    if missing:
        return f"SLURM/munge not installed (missing {', '.join(missing)}; apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the test cluster runs its daemons as root"
    if DEFAULT_CONF.is_symlink() and _left_by_a_dead_test_cluster(DEFAULT_CONF):
        DEFAULT_CONF.unlink()  # a test cluster's run was killed before it could remove its link
    if DEFAULT_CONF.exists() or DEFAULT_CONF.is_symlink():
        return f"{DEFAULT_CONF} exists (a SLURM cluster is configured here); the test cluster will not replace it"
    return None


DEFAULT_CONF = Path("/etc/slurm/slurm.conf")


def _left_by_a_dead_test_cluster(link: Path) -> bool:
    """A link into a test cluster's temp dir (``LocalSlurm``: .../pytest-of-<user>/.../slurm<N>/slurm.conf) whose
    target is gone, or whose slurmctld no longer runs. A real cluster's config, or a live test cluster's, is not."""
    target = Path(os.readlink(link))
    if not target.exists():
        return True
    if not (target.name == "slurm.conf" and target.parent.name.startswith("slurm") and "pytest-of-" in str(target)):
        return False
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and Path(args[0].decode(errors="replace")).name == "slurmctld" and str(target).encode() in args:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 - 2048
    raise RuntimeError("no MemTotal in /proc/meminfo")


class LocalSlurm:
    def __init__(self, root: Path):
        self.root = root
        self.cpus = os.cpu_count() or 1  # the node declares what it has: SLURM packs jobs by these
        self.conf = root / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        self.linked = False
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def _write_config(self) -> None:
        r = self.root
        for d in ("state", "spool", "munge", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (r / "munge").chmod(0o755)
        self.munge_socket = r / "munge" / "munge.socket"
        self.conf.write_text(f"""
ClusterName=loraforge-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}
SlurmctldPidFile={r / "slurmctld.pid"}
SlurmdPidFile={r / "slurmd.pid"}
SlurmctldLogFile={r / "log" / "slurmctld.log"}
SlurmdLogFile={r / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
JobAcctGatherParams=OverMemoryKill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MinJobAge=3600
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={_mem_mb()} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")

    def start(self, timeout: float = 60) -> LocalSlurm:
        self._write_config()
        DEFAULT_CONF.parent.mkdir(parents=True, exist_ok=True)
        DEFAULT_CONF.symlink_to(self.conf)  # raises if anything is there: never replace a real config
        self.linked = True
        m = self.root / "munge"
        subprocess.run(
            [
                "munged",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={m / 'munge.key'}",
                f"--pid-file={m / 'munged.pid'}",
                f"--log-file={m / 'munged.log'}",
                f"--seed-file={m / 'munged.seed'}",
            ],
            check=True,
            env=self.env,
        )
        log = open(self.root / "log" / "daemons.out", "ab")  # noqa: SIM115 - lives as long as the daemons
        self.procs.append(
            subprocess.Popen(
                ["slurmctld", "-D", "-f", str(self.conf)], env=self.env, stdout=log, stderr=log, start_new_session=True
            )
        )
        time.sleep(1)
        self.procs.append(
            subprocess.Popen(
                ["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)],
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=self.env)
            if out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated"):
                return self
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"SLURM did not come up: {self.logs()}")

    def logs(self) -> str:
        parts = []
        for f in sorted((self.root / "log").glob("*")) + [self.root / "munge" / "munged.log"]:
            if f.exists():
                parts.append(f"== {f.name}\n{f.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def jobs(self) -> list[dict]:
        """Every job slurmctld still knows (MinJobAge keeps finished ones for an hour): SLURM's own record."""
        out = subprocess.run(
            ["scontrol", "show", "job", "--oneliner"], capture_output=True, text=True, env=self.env, check=True
        ).stdout
        jobs = []
        for line in out.splitlines():
            if line.startswith("JobId="):
                fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
                jobs.append(fields)
        return jobs

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--user=root"], env=self.env, capture_output=True)
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        self.procs.clear()
        pid_file = self.root / "munge" / "munged.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
        # slurmstepd processes of killed jobs, if any, belong to this cluster's spool dir
        subprocess.run(["pkill", "-f", f"slurmstepd.*{self.root}"], capture_output=True)
        if self.linked and DEFAULT_CONF.is_symlink() and DEFAULT_CONF.resolve() == self.conf.resolve():
            DEFAULT_CONF.unlink()
            self.linked = False
        shutil.rmtree(self.root, ignore_errors=True)
