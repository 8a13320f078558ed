"""Resource checks (synthetic clusters and a real embedded Ray), placement, connect()."""

from __future__ import annotations

import os

import pytest
from ldp.cluster.connect import connect, resolve_address, worker_env
from ldp.cluster.placement import scaling_config, worker_resources
from ldp.cluster.resources import ClusterResources, NodeResources, check_fits, cpus_per_worker_for
from ldp.errors import LdpError, UsageError


def _cluster(*nodes: tuple[float, float], free: dict | None = None) -> ClusterResources:
    """Nodes as (cpus, gpus); memory 64 GB each."""
    ns = tuple(
        NodeResources(f"n{i}", f"10.0.0.{i}", c, g, 64e9, is_head=i == 0)
        for i, (c, g) in enumerate(nodes)
    )
    total = {
        "CPU": sum(n.cpus for n in ns),
        "GPU": sum(n.gpus for n in ns),
        "memory": sum(n.memory_bytes for n in ns),
    }
    return ClusterResources(total=total, available=dict(total, **(free or {})), nodes=ns)


# --- CPUs per worker when the job does not say ---------------------------------------------


def test_one_node_shares_its_cpus_among_the_workers_and_larger_clusters_give_one():
    assert cpus_per_worker_for(1, _cluster((2, 0))) == 2
    assert cpus_per_worker_for(2, _cluster((2, 0))) == 1
    assert cpus_per_worker_for(2, _cluster((7, 0))) == 3
    assert cpus_per_worker_for(3, _cluster((2, 0))) == 1  # never below one (check_fits refuses it)
    assert cpus_per_worker_for(1, _cluster((16, 0), (16, 0))) == 1
    assert cpus_per_worker_for(1, _cluster((16, 4)), use_gpu=True) == 1


# --- check_fits on described clusters ------------------------------------------------------


def test_too_many_cpus_names_the_arithmetic_and_the_fix():
    with pytest.raises(LdpError) as err:
        check_fits(2, 2, resources=_cluster((2, 0)))
    assert str(err.value) == (
        "job needs 4 CPUs (2 workers x 2), cluster has 2; use --workers 1 or a bigger cluster"
    )


def test_gpus_on_a_cpu_cluster():
    with pytest.raises(LdpError, match=r"job needs 8 GPUs \(8 workers x 1\), the cluster has none"):
        check_fits(8, 1, 1, resources=_cluster((16, 0)))


def test_memory_per_worker():
    with pytest.raises(LdpError, match=r"job needs 200.0 GB memory \(2 workers x 100.0 GB\)"):
        check_fits(2, 1, 0, 100e9, resources=_cluster((4, 0), (4, 0)))


def test_a_worker_must_fit_on_one_node():
    two_nodes = _cluster((32, 4), (32, 4))
    # 8 GPUs exist in total, but no node has 8 for one worker.
    with pytest.raises(LdpError, match="no node is that big"):
        check_fits(1, 1, 8, resources=two_nodes)
    # 3 workers x 2 GPUs: 6 <= 8 in total and 2 + 2 slots per node -> fits.
    assert check_fits(3, 1, 2, resources=two_nodes).fits_now
    # 2 workers x 3 GPUs: 6 <= 8, but each node places only one.
    assert check_fits(2, 1, 3, resources=two_nodes).fits_now
    # 3 workers x 3 GPUs on 4 + 4 + 2 GPUs: 9 <= 10 in total, but only two nodes can host one.
    with pytest.raises(LdpError, match=r"the 3 node\(s\) can place 2 .*use --workers 2"):
        check_fits(3, 1, 3, resources=_cluster((32, 4), (32, 4), (32, 2)))


def test_strict_placements():
    two_nodes = _cluster((32, 4), (32, 4))
    with pytest.raises(LdpError, match="all on one node"):
        check_fits(2, 1, 3, resources=two_nodes, placement_strategy="STRICT_PACK")
    assert check_fits(4, 1, 1, resources=two_nodes, placement_strategy="STRICT_PACK").fits_now
    with pytest.raises(LdpError, match="one per node"):
        check_fits(3, 1, 1, resources=two_nodes, placement_strategy="STRICT_SPREAD")


def test_busy_cluster_is_a_wait_not_an_error():
    report = check_fits(2, 1, resources=_cluster((4, 0), free={"CPU": 1.0}))
    assert not report.fits_now
    assert "2 CPUs needed, 1 free" in report.message


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((0,), {}, "--workers must be >= 1"),
        ((1, -1), {}, ">= 0"),
        ((1, 0, 0), {}, "at least some"),
        ((1,), {"placement_strategy": "RANDOM"}, "unknown placement"),
    ],
)
def test_check_fits_bad_requests(args, kwargs, match):
    with pytest.raises(UsageError, match=match):
        check_fits(*args, resources=_cluster((2, 0)), **kwargs)


# --- placement ------------------------------------------------------------------------------


def test_scaling_config_is_train_v2_with_the_bundle():
    from ray.train.v2.api.config import ScalingConfig

    sc = scaling_config(4, use_gpu=True, cpus_per_worker=8, placement_strategy="spread")
    assert isinstance(sc, ScalingConfig)
    assert sc.num_workers == 4 and sc.use_gpu
    assert sc.resources_per_worker == {"CPU": 8, "GPU": 1}
    assert sc.placement_strategy == "SPREAD"
    assert sc.total_resources == {"CPU": 32, "GPU": 4}
    cpu = scaling_config(2, cpus_per_worker=1, memory_per_worker_bytes=10**9)
    assert cpu.resources_per_worker == {"CPU": 1, "memory": 10**9}
    assert cpu.placement_strategy == "PACK" and not cpu.use_gpu


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_workers": 0}, "local mode"),
        ({"num_workers": 1, "gpus_per_worker": 1}, "use_gpu"),
        ({"num_workers": 1, "placement_strategy": "RANDOM"}, "unknown placement"),
    ],
)
def test_scaling_config_refuses(kwargs, match):
    with pytest.raises(UsageError, match=match):
        scaling_config(**kwargs)


# --- addresses ------------------------------------------------------------------------------


def test_resolve_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address() == ("local", "local")
    assert resolve_address("local") == ("local", "local")
    assert resolve_address("auto") == ("ray", "auto")
    assert resolve_address("10.0.0.1:6380") == ("ray", "10.0.0.1:6380")
    assert resolve_address("ray://head:10001") == ("ray", "ray://head:10001")
    assert resolve_address("http://127.0.0.1:8265/") == ("jobs", "http://127.0.0.1:8265")
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert resolve_address() == ("jobs", "http://head:8265")
    assert resolve_address("local") == ("local", "local")  # the flag wins over the env
    for bad in ("head", "s3://x", "head:port"):
        with pytest.raises(UsageError):
            resolve_address(bad)


def test_a_head_from_cluster_up_is_used_without_an_address(monkeypatch):
    """`ldp cluster up` records its head; jobs find it with no --address or RAY_ADDRESS, while an
    explicit `local` still asks for an embedded Ray."""
    import ldp.cluster.local as local

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    head = local.HeadInfo(**{f: v for f, v in _head_fields().items()})
    monkeypatch.setattr(local, "running_head", lambda: head)
    assert resolve_address() == ("ray", head.address)
    assert resolve_address("local") == ("local", "local")
    monkeypatch.setattr(local, "running_head", lambda: None)
    assert resolve_address() == ("local", "local")


def _head_fields() -> dict:
    import dataclasses

    import ldp.cluster.local as local

    values = {"host": "127.0.0.1", "port": 6380, "dashboard_port": 8265, "pid": 1, "num_cpus": 2.0}
    out = {}
    for f in dataclasses.fields(local.HeadInfo):
        if f.name in values:
            out[f.name] = values[f.name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            out[f.name] = "x" if f.type in ("str", str) else 0
    return out


def test_worker_env(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.delenv("LDP_CACHE", raising=False)
    env = worker_env()
    assert env["RAY_TRAIN_ENABLE_STATE_TRACKING"] == "1"
    assert env["TORCH_EXTENSIONS_DIR"].startswith(os.environ["LDP_HOME"])
    assert env["TORCH_EXTENSIONS_DIR"].endswith("torch_extensions")
    assert "TORCH_EXTENSIONS_DIR" not in worker_env(local=False)  # a remote cluster's nodes
    monkeypatch.setenv("LDP_CACHE", str(tmp_path))
    assert worker_env(local=False)["TORCH_EXTENSIONS_DIR"] == str(tmp_path / "torch_extensions")


# --- a real embedded Ray (2 CPUs) ------------------------------------------------------------


def _wait_free_cpus(n: float, timeout: float = 30.0) -> None:
    """Ray reports freed resources a moment after a task or placement group changes them."""
    import time

    import ray

    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0.0) != n:
        assert time.monotonic() < deadline, f"CPUs free never became {n}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def local_ray(ray_home):
    handle = connect(num_cpus=2)
    try:
        yield handle
    finally:
        handle.shutdown()


@pytest.mark.slow
def test_connect_starts_an_embedded_ray_and_stops_it(local_ray):
    import ray

    assert local_ray.kind == "local" and local_ray.started_cluster
    assert local_ray.dashboard_url and local_ray.dashboard_url.startswith("http://127.0.0.1:")
    assert ray.is_initialized()
    res = local_ray.resources()
    assert res.cpus == 2 and res.gpus == 0 and len(res.nodes) == 1 and res.nodes[0].is_head
    # A second connect() reuses the connection and does not own it.
    again = connect()
    assert not again.owns_driver
    again.shutdown()
    assert ray.is_initialized()


@pytest.mark.slow
def test_workers_get_the_ldp_environment(local_ray):
    import ray

    @ray.remote(num_cpus=1)
    def env():
        return {
            k: os.environ.get(k)
            for k in ("RAY_TRAIN_ENABLE_STATE_TRACKING", "TORCH_EXTENSIONS_DIR")
        }

    got = ray.get(env.remote(), timeout=120)
    assert got["RAY_TRAIN_ENABLE_STATE_TRACKING"] == "1"
    assert got["TORCH_EXTENSIONS_DIR"] == local_ray.runtime_env["env_vars"]["TORCH_EXTENSIONS_DIR"]
    assert got["TORCH_EXTENSIONS_DIR"].endswith("cache/torch_extensions")


@pytest.mark.slow
def test_state_api_in_workers_finds_this_cluster_beside_another_ray(local_ray, in_ray_home):
    """Ray Train's placement-group cleaner and state actor call the state API with no address
    from inside workers. With a second Ray on the machine Ray's own lookup gives up ("Found
    multiple active Ray instances"), the cleaner dies and a stopped trial's placement group is
    never freed; each embedded cluster's workers are therefore told their own API server."""
    import subprocess
    import sys
    import time

    import ray

    from .conftest import subprocess_env

    other = subprocess.Popen(
        [sys.executable, "-c", "import ray, time; ray.init(num_cpus=1, include_dashboard=False); "
                               "print('up', flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=subprocess_env(in_ray_home),
    )
    try:
        assert other.stdout.readline().strip() == "up"

        @ray.remote(num_cpus=0)
        def my_actors() -> tuple[str, list[str]]:
            from ray.util.state import list_actors

            return os.environ.get("RAY_API_SERVER_ADDRESS", ""), [a.class_name for a in list_actors()]

        @ray.remote(num_cpus=0)
        class Marker:
            def ping(self) -> bool:
                return True

        @ray.remote(num_cpus=0)
        def lookup_without_the_address() -> str:
            from ray.util.state import list_actors

            saved = os.environ.pop("RAY_API_SERVER_ADDRESS", None)
            try:
                list_actors()
            except ConnectionError as exc:
                return str(exc)
            finally:  # Ray reuses this worker process for the next task
                if saved is not None:
                    os.environ["RAY_API_SERVER_ADDRESS"] = saved
            return "found"

        # The situation is real: left to itself, Ray's lookup sees two clusters and gives up.
        assert "multiple active Ray instances" in ray.get(lookup_without_the_address.remote(), timeout=120)

        marker = Marker.remote()
        ray.get(marker.ping.remote(), timeout=60)
        deadline = time.monotonic() + 30
        while True:  # the state API lists an actor a moment after it starts
            address, names = ray.get(my_actors.remote(), timeout=120)
            if any(n.endswith("Marker") for n in names) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert address == local_ray.dashboard_url.rstrip("/")
        assert any(n.endswith("Marker") for n in names), names
    finally:
        other.terminate()  # Ray's SIGTERM handler in that driver stops its cluster
        try:
            other.wait(timeout=30)
        except subprocess.TimeoutExpired:
            other.kill()
            other.wait(timeout=30)


@pytest.mark.slow
def test_check_fits_against_real_ray(local_ray):
    _wait_free_cpus(2)
    with pytest.raises(
        LdpError, match=r"job needs 4 CPUs \(2 workers x 2\), cluster has 2; use --workers 1"
    ):
        check_fits(2, 2)
    with pytest.raises(LdpError, match="the cluster has none"):
        check_fits(1, 1, 1)
    assert check_fits(1, 2).fits_now
    assert check_fits(2, 1).fits_now


@pytest.mark.slow
def test_a_fitting_request_is_really_placeable(local_ray):
    """What check_fits passes, Ray places: the same bundles as a real placement group."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    _wait_free_cpus(2)  # a task of an earlier test may still hold its CPU for a moment
    assert check_fits(2, 1, placement_strategy="STRICT_PACK").fits_now
    bundle = worker_resources(False, 1)
    pg = placement_group([bundle] * 2, strategy="STRICT_PACK")
    try:
        ray.get(pg.ready(), timeout=60)
        _wait_free_cpus(0)
        assert check_fits(1, 1).fits_now is False  # both CPUs are now reserved
    finally:
        remove_placement_group(pg)
