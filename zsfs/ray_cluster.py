"""The Ray cluster of ``zsfs extract --ray``: a run Ray cannot do refused before any work, a local
instance started or a cluster joined (an address where none answers, or the wrong port, is one
clear line at once, where Ray itself would retry for minutes), and the workers it can hold: one per
GPU, or one per node sharing its CPU cores. The pool of workers itself: ``zsfs.distributed``."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from zsfs.errors import ParameterError, ZsfsError
from zsfs.names import counted, utf8_text, visible

try:
    import ray
except ImportError:  # the core install does not need Ray
    ray = None

LOCAL = "local"
"""``--ray local``: a new Ray instance on this machine."""


CONNECT_SECONDS = 10.0  # for a cluster's address to take a TCP connection


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04" + bytes(5)  # + an empty SETTINGS frame


HTTP2_FRAME_HEADER = 9  # bytes: length (3), type (1), flags (1), stream (4)


HTTP2_SETTINGS = 0x04  # the frame type a gRPC server sends first


def check_ray_plan(address: str | None, device: str, n_workers: int | None) -> None:
    """Refuse, before any work (so that a refusal leaves nothing behind), a run Ray cannot do:
    Ray not installed, or more CPU workers than a local Ray instance would have CPUs (Ray counts
    at most this machine's cores; a cluster's are counted once connected)."""
    if ray is None:
        raise ZsfsError('--ray needs Ray, which the core install leaves out: pip install -e ".[ray]" in the zsfs '
                        'checkout (docs/scale.md)')
    if not ray.is_initialized():
        _check_text_for_ray()
    if address == LOCAL and not ray.is_initialized() and device != "cuda" and n_workers is not None:
        _check_cpu_workers(n_workers, os.cpu_count() or 1, "this machine's", "ask for fewer")


def _check_text_for_ray() -> None:
    """Refuse a command line or working folder holding a name that is not UTF-8 text (a byte
    such as 0xFF): ``ray.init`` hands both to Ray's core as UTF-8 strings and fails there with a
    ``UnicodeEncodeError`` (the command line as the job's entrypoint, the working folder on the
    workers' search path)."""
    for argument in sys.orig_argv:
        if utf8_text(argument) != argument:
            raise ZsfsError(f"Ray cannot start with the argument {visible(argument)} on the command line: Ray takes "
                            "it as UTF-8 text, which that name is not; give it through a link to it (or to its folder) "
                            "with a UTF-8 name, or leave out --ray")
    folder = os.getcwd()
    if utf8_text(folder) != folder:
        raise ZsfsError(f"Ray cannot start in the working folder {visible(folder)}: Ray takes its name as UTF-8 "
                        "text, which it is not; run zsfs from another folder, or leave out --ray")


def connect(address: str | None) -> bool:
    """Connect this process to Ray; True when it started the Ray instance itself."""
    if ray.is_initialized():
        return False
    with _sigterm_kept():
        return _start_or_join(address)


def ray_messages_to_stderr() -> None:
    """For the command line, before Ray starts: Ray's driver prints its raylets' messages ("A worker
    died or was killed ...": zsfs redoes that worker's shard and says so), and its workers' output
    where it forwards them, on stdout, where zsfs writes only data: they go to stderr. Ray has no
    option for it; where a Ray lacks the function, its lines stay as they are. For this process's life."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return
    show = getattr(ray_worker, "print_to_stdstream", None)
    if show is None or getattr(show, "to_stderr", False):
        return

    def to_stderr(data: dict, *args, **kwargs):
        return show({**data, "is_err": True}, *args, **kwargs)

    to_stderr.to_stderr = True
    ray_worker.print_to_stdstream = to_stderr


@contextmanager
def _sigterm_kept() -> Iterator[None]:
    """``ray.init`` makes SIGTERM a bare ``sys.exit(15)`` in this process: keep what this process
    did with it (the command line stops cleanly, with its message; see ``zsfs.cli.stops``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    except SystemExit as exit:  # SIGTERM while Ray started: Ray's handler had already replaced ours
        if exit.code == signal.SIGTERM and callable(previous):
            previous(signal.SIGTERM, None)
        raise
    finally:
        if previous is not None:  # None: set outside Python, which cannot be put back
            signal.signal(signal.SIGTERM, previous)


RAY_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"


def _without_token_auth_notice(record: logging.LogRecord) -> bool:
    """Drops Ray's notice that token authentication is on (a line at every start of a local
    instance, and on joining from a machine holding a token): the safe state, on every run. Its
    warning that authentication is off is kept."""
    return not record.getMessage().startswith("Token authentication is enabled")


def _start_or_join(address: str | None) -> bool:
    logging.getLogger(RAY_TOKEN_LOGGER).addFilter(_without_token_auth_notice)  # (once: a filter is added once)
    if address == LOCAL:  # Ray's own "local": a new instance, whatever RAY_ADDRESS or the last `ray start` says
        ray.init(address=LOCAL, include_dashboard=False, log_to_driver=False, configure_logging=False)
        return True
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    fix = "start one with `ray start --head`, pass its address (--ray HOST:6379 or RAY_ADDRESS), or --ray local"
    refused = _unreachable(address)
    if refused:  # Ray itself would retry for minutes, printing warnings
        raise ZsfsError(f"no Ray cluster at {address!r} ({refused}); {fix}")
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except ConnectionError as error:
        raise ZsfsError(_join_failure(address, error, fix)) from None
    except ValueError as error:  # "Invalid address format: bogus", an unparsable port
        if "ray[client]" in str(error):  # a ray:// address, without Ray Client's package
            raise ZsfsError(f"{address!r} is a Ray Client address, which needs Ray's client package: "
                            "pip install 'ray[client]' (zsfs' [ray] extra has it), or pass the cluster's HOST:6379 "
                            "from one of its nodes") from None
        raise ZsfsError(f"{address!r} is not a Ray cluster address ({error}); {fix}") from None
    return False


def _join_failure(address: str, error: ConnectionError, fix: str) -> str:
    """Why joining ``address`` failed, and what to do."""
    if address == "auto" and "Could not find any running Ray instance" in str(error):
        # Ray's own text names its flags (`--address`), not zsfs'; a token cannot help where none runs
        return f"no Ray cluster runs on this machine for --ray to join; {fix}"
    return f"could not join a Ray cluster at {address!r} ({error}); {_token_hint() or fix}"


def _token_hint() -> str:
    """What to try when joining failed while this machine holds a Ray auth token and Ray was not
    told to send it: a cluster started with `ray start` where the token exists requires it (Ray
    says only that it failed to connect, after ~20 s of warnings)."""
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_MODE") == "token" or not (token.is_file() or os.environ.get("RAY_AUTH_TOKEN")):
        return ""
    return (f"if the cluster uses token authentication (a cluster started where {token} exists does), rerun with "
            "RAY_AUTH_MODE=token set, and the cluster's token in that file or in RAY_AUTH_TOKEN")


def _unreachable(address: str, timeout: float = CONNECT_SECONDS) -> str | None:
    """Why no Ray cluster answers at ``address`` (``HOST:PORT`` or ``ray://HOST:PORT``): nothing
    takes a TCP connection there, or what does is no gRPC server (HTTP/2), as a cluster's GCS and
    a Ray client server are (a dashboard's port, say); None when one answers (or the address has
    another form, such as "auto", or the cluster speaks TLS)."""
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit() or not host:
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as connection:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):  # a plain preface gets no answer
                return None
            connection.sendall(HTTP2_PREFACE)
            reply = b""
            try:  # the whole frame header, even when it comes in pieces
                while len(reply) < HTTP2_FRAME_HEADER and (piece := connection.recv(HTTP2_FRAME_HEADER - len(reply))):
                    reply += piece
            except TimeoutError:
                return (f"a connection is taken there, but nothing answered in {timeout:g} s (an overloaded head, "
                        "or a tunnel whose far end is down?)")
            except ConnectionResetError:  # closed before reading the preface: said below, as a plain close
                pass
    except OSError as error:
        return error.strerror or str(error) or type(error).__name__
    if not reply:  # a tunnel (kubectl port-forward, ssh -L) whose far end is down takes, then closes, connections
        return "a connection is taken there, then closed without an answer (a tunnel whose far end is down?)"
    if len(reply) < HTTP2_FRAME_HEADER or reply[3] != HTTP2_SETTINGS:  # a gRPC server's first frame
        port_of = ("its head's Ray client server, `ray://HEAD:10001` by default" if address.startswith("ray://") else
                   "its head's `ray start --head --port`, 6379 by default")
        return f"something answers there, but not a Ray cluster: its address is the port of {port_of}, not the " \
               "dashboard's (8265)"
    return None


def plan_workers(device: str, n_workers: int | None) -> tuple[int, int]:
    """(workers, CPU cores per worker): on CUDA one worker per GPU; on CPU one per node; the
    cluster's CPUs are shared out evenly (DataLoader decoding and, on CPU, the models' threads),
    as far as every worker still fits on a node."""
    resources = ray.cluster_resources()
    cpus = int(resources.get("CPU", 1))
    node_cpus = [int(node.get("Resources", {}).get("CPU", 0)) for node in ray.nodes() if node.get("Alive")]
    if device == "cuda":
        gpus = int(resources.get("GPU", 0))
        if gpus == 0:
            raise ParameterError("{device} cuda with {ray}, but the Ray cluster has no GPU; use {device} cpu, or a "
                                 "cluster with GPU nodes")
        n_workers = gpus if n_workers is None else n_workers
        if n_workers > gpus:  # the workers that found no GPU would wait for one forever, in silence
            raise ParameterError(f"{{ray_workers}} {n_workers} is more than the Ray cluster's {counted(gpus, 'GPU')}: "
                                 "each worker holds one; ask for fewer, or add nodes first")
    elif n_workers is None:
        n_workers = max(1, len([node for node in ray.nodes() if node.get("Alive")]))
    else:
        _check_cpu_workers(n_workers, cpus, "the Ray cluster's", "ask for fewer, or add nodes first")
    return n_workers, cores_per_worker(node_cpus, n_workers) or 1


def _check_cpu_workers(n_workers: int, cpus: int, whose: str, fix: str) -> None:
    if n_workers > cpus:  # the workers that found no CPU would wait for one forever, in silence
        raise ParameterError(f"{{ray_workers}} {n_workers} is more than {whose} {counted(cpus, 'CPU')}: each worker "
                             f"needs one; {fix}")


def cores_per_worker(node_cpus: Sequence[int], n_workers: int) -> int | None:
    """The most CPU cores each of ``n_workers`` workers can get with every worker on one node
    (nodes of ``node_cpus`` cores); None when not even one core each fits. An even split of the
    total would leave a worker waiting for a node that has that many (4 + 1 + 1 cores, 2 workers:
    3 each fit nowhere twice)."""
    cores = sum(node_cpus) // max(n_workers, 1)
    while cores >= 1 and sum(cpus // cores for cpus in node_cpus) < n_workers:
        cores -= 1
    return cores or None
