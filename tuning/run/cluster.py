"""Starting Ray or joining an existing cluster, and the checks a cluster's failure modes deserve."""

from __future__ import annotations

import logging
import os
import socket
import sys
import sysconfig
import uuid
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tuning.config import ConfigError
from tuning.run.storage import STORAGE_HINT, local_path

PROBE_TIMEOUT_S = 120  # a node's first task starts a worker process: seconds on a busy node


def start_ray(
    address: str | None,
    dashboard: bool,
    host: str = "127.0.0.1",
    ship: list[str] = (),
    quiet: bool = False,
) -> str | None:
    """Join the cluster at `address` or RAY_ADDRESS, else start a local Ray; return dashboard.

    `ship`: the import paths of users' models. A local Ray's workers import them as the
    driver does (Ray gives them its working directory and they inherit PYTHONPATH); a
    cluster's nodes get a copy of each one's top-level package or module. `quiet`: Ray's and
    its workers' logs from warnings up (no start-up notices, no checkpoint lines)."""
    if quiet:
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # no "repeated Nx" notices either
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        modules = sorted({path for model in ship if (path := user_code(model))})
        context = connect(address, {"py_modules": modules} if modules else None, quiet=quiet)
    else:
        # "local": a new Ray even where `ray start` left one running. 127.0.0.1 unless asked
        # otherwise: the dashboard has no authentication of its own.
        context = ray.init(
            address="local", include_dashboard=dashboard, dashboard_host=host, **logs(quiet)
        )
    url = context.dashboard_url
    return f"http://{url}" if url and not url.startswith("http") else url


def check_reachable(address: str, timeout_s: float = 10) -> None:
    """ConfigError unless something listens at `address` (host:port): `ray.init` would retry for
    minutes. "auto" and other forms without a port are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConfigError(
            f"no Ray cluster answers at --address {address} ({err.strerror or err}); use the "
            "address `ray start --head` printed (HEAD_IP:6379) and check that this machine "
            "can reach it"
        ) from None


def user_code(model: str) -> str | None:
    """The folder of the top-level package (or the file of the module) that holds the model
    `package.module:function`, unless it is installed: what a cluster's nodes need a copy of."""
    top = sys.modules[model.partition(":")[0].split(".")[0]]  # imported by the config's check
    path = Path(top.__path__[0] if hasattr(top, "__path__") else top.__file__).resolve()
    installed = {Path(sysconfig.get_path(kind)).resolve() for kind in ("purelib", "platlib")}
    return None if installed & {*path.parents} else str(path)


def logs(quiet: bool) -> dict:
    """`ray.init`'s logging options: the driver's and the workers' logs from warnings up."""
    if not quiet:
        return {}
    return {
        "logging_level": logging.WARNING,
        "logging_config": ray.LoggingConfig(log_level="WARNING"),
    }


def connect(
    address: str, runtime_env: dict | None = None, *, quiet: bool = False
) -> ray.RayContext:
    """`ray.init` on an existing cluster, with Ray's connection errors turned into ConfigError."""
    check_reachable(address)
    try:
        # An existing cluster has its own dashboard and resources: pass no local-only options.
        return ray.init(address=address, runtime_env=runtime_env, **logs(quiet))
    except ConnectionError as err:
        if _refused_token(err):
            # Ray never sends this machine's token to an address given explicitly on its own.
            raise ConfigError(
                f"the Ray cluster at {address} requires token authentication: run with "
                "RAY_AUTH_MODE=token and the cluster's token in ~/.ray/auth_token (or "
                "RAY_AUTH_TOKEN); `ray get-auth-token` on the head node prints it"
            ) from None
        raise ConfigError(f"cannot join the Ray cluster at {address}: {err}") from None


def _refused_token(err: BaseException | None) -> bool:
    while err is not None:
        if isinstance(err, ray.exceptions.AuthenticationError) or "InvalidAuthToken" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def trial_nodes() -> list[dict]:
    """The alive nodes that can run a trial (every trial needs CPUs)."""
    return [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]


def node_name(node: dict) -> str:
    """Host, address and the start of the node id: simulated nodes share host and address."""
    return f"{node['NodeManagerHostname']} ({node['NodeManagerAddress']}, {node['NodeID'][:8]})"


def describe_cluster() -> str:
    resources = ray.cluster_resources()
    return (
        f"{len(trial_nodes())} nodes, {resources.get('CPU', 0):g} CPUs, "
        f"{resources.get('GPU', 0):g} GPUs"
    )


def _sees(path: str) -> bool:
    return os.path.exists(path)


def probe_nodes(nodes: list[dict], path: str) -> dict[str, bool | None]:
    """Node id → whether a task pinned to that node sees `path`; None: no answer in time."""
    sees = ray.remote(num_cpus=0, max_retries=0)(_sees)
    refs = {
        node["NodeID"]: sees.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(path)
        for node in nodes
    }
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
    return {node_id: ray.get(ref) if ref in ready else None for node_id, ref in refs.items()}


def check_shared_storage(folder: str, origin: str) -> list[str]:
    """ConfigError naming every node that cannot see `folder`, the folder on this machine where
    Tune will keep checkpoints (`origin` says why there); warnings for nodes that did not answer.

    On one node there is nothing to check. A marker with a fresh name, not the folder itself:
    each node may well have a folder of that name of its own.
    """
    nodes = trial_nodes()
    if len(nodes) < 2:
        return []
    marker = Path(folder, f".cifar_tune_storage_probe_{uuid.uuid4().hex}")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    try:
        seen = probe_nodes(nodes, str(marker))
    finally:
        marker.unlink(missing_ok=True)
    named = {n["NodeID"]: node_name(n) for n in nodes}
    blind = [named[node_id] for node_id, sees in seen.items() if sees is False]
    if blind:
        raise ConfigError(
            f"Tune keeps trial state and checkpoints in {folder} ({origin}), a folder that "
            f"{len(blind)} of this cluster's {len(nodes)} nodes cannot see: {'; '.join(blind)}. "
            f"Trials there could not save or restore checkpoints; {STORAGE_HINT}"
        )
    return [
        f"node {named[node_id]} did not answer within {PROBE_TIMEOUT_S} s; cannot tell "
        f"whether it sees {folder}"
        for node_id, sees in seen.items()
        if sees is None
    ]


def check_run_storage(storage: str | None, run_dir: Path) -> list[str]:
    """`check_shared_storage` for where this run keeps Tune's state; remote URIs pass."""
    if storage is None:
        return check_shared_storage(
            str(run_dir.resolve()), "the run folder, as no --storage is set"
        )
    folder = local_path(storage)
    return check_shared_storage(folder, "--storage") if folder else []
