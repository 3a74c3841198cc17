"""The command line both entry scripts share: parse, validate, load data, run, export, print."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from pathlib import Path

from pydantic import ValidationError

from trainable.data import DataError, DataLocation, locate_dataset, read_dataset
from tuning.config import (
    ConfigError,
    ExperimentConfig,
    check_own_models,
    load_config,
    smoke_overrides,
)
from tuning.config.credentials import check_no_credentials, redact
from tuning.run.folder import RunFolder
from tuning.run.signals import sigterm_as_ctrl_c
from tuning.run.storage import is_uri, prepare_storage
from tuning.run.timing import Phases

REPO = Path(__file__).resolve().parents[2]
LOCALHOST = "127.0.0.1"
DASHBOARD_WARNING = (
    "warning: the Ray dashboard listens on {host} and has no authentication of its own: anyone "
    "who reaches that address can see and stop jobs. Prefer the default 127.0.0.1 with an SSH "
    "tunnel (ssh -L 8265:127.0.0.1:8265 HOST), or enable Ray's token authentication "
    "(RAY_AUTH_MODE=token, https://docs.ray.io/en/latest/ray-security/token-auth.html)."
)
AUTH_WARNING = (
    "warning: RAY_AUTH_MODE=disabled: the local Ray starts without token authentication, and "
    "its ports listen on this machine's network address, where anyone who reaches them can "
    "run code as you. Unset RAY_AUTH_MODE (token authentication is Ray's default) unless the "
    "machine is on a network only you use."
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="experiment YAML (default: the script's own)")
    parser.add_argument("--data-dir", help="CIFAR-10 files or an image-folder tree (data.dir)")
    parser.add_argument("--results-dir", default="results", help="where run folders go")
    parser.add_argument("--name", help="run folder name (default: config name + timestamp)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value by dotted key, e.g. --set trial.epochs=3 (repeatable)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny run: 2 trials, 2 epochs, small data (synthetic unless --data-dir is given)",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run named --name")
    parser.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS or local)")
    parser.add_argument(
        "--storage",
        help="where Tune keeps trial state and checkpoints (run.storage): a folder every node "
        "sees, or a URI such as s3://bucket/runs (default: the run folder)",
    )
    parser.add_argument(
        "--warm-start",
        action="append",
        default=[],
        metavar="RUN_DIR",
        help="an Optuna search starts from this earlier run's finished trials (repeatable; "
        "search.warm_start)",
    )
    parser.add_argument("--no-dashboard", action="store_true", help="start Ray without dashboard")
    parser.add_argument("--no-report", action="store_true", help="skip report.md and figures")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="Tune's and Ray's own console output instead of the compact progress view",
    )
    parser.add_argument(
        "--dashboard-host",
        default=LOCALHOST,
        help="address the local dashboard listens on (default 127.0.0.1: this machine only)",
    )
    return parser.parse_args(argv)


def open_run(args: argparse.Namespace, default_config: str) -> tuple[ExperimentConfig, RunFolder]:
    """The validated config and the run's folder (a resumed one locked at once, a new one not
    made yet); ConfigError for anything the user must fix."""
    results = Path(args.results_dir)
    if args.resume:
        if args.name is not None and (
            args.config or args.overrides or args.smoke or args.warm_start
        ):
            raise ConfigError(
                "--resume continues a run as it was configured (its config.yaml): "
                "drop --config, --set, --smoke and --warm-start"
            )
        folder = RunFolder.existing(results, args.name)
        try:
            # The data or the storage may have moved since: the settings a resume may change.
            data = [f"data.dir={os.path.abspath(args.data_dir)}"] if args.data_dir else []
            config = load_config(folder.path / "config.yaml", data + storage_override(args))
            if config.run.storage:
                prepare_storage(config.run.storage, folder.path, resume=True)
        except ConfigError:
            folder.close()
            raise
        return config, folder
    path = args.config or REPO / default_config
    # Absolute: the resolved config.yaml must still point at the data from another folder.
    overrides = [f"data.dir={os.path.abspath(args.data_dir)}"] if args.data_dir else []
    if args.smoke:
        overrides += smoke_overrides(load_config(path), synthetic=not args.data_dir)
    config = load_config(path, overrides + args.overrides + storage_override(args))
    if args.warm_start:
        try:  # absolute: config.yaml must find them from anywhere
            config.search.warm_start = [
                *config.search.warm_start,
                *(str(Path(d).resolve()) for d in args.warm_start),
            ]
            config = ExperimentConfig.model_validate(config.model_dump())
        except ValidationError as err:
            message = err.errors()[0]["msg"].removeprefix("Value error, ")
            raise ConfigError(f"--warm-start: {message}") from None
    name = f"{config.name}-{datetime.now():%Y%m%d-%H%M%S}" if args.name is None else args.name
    folder = RunFolder.new(results, name)
    if config.run.storage:
        prepare_storage(config.run.storage, folder.path, resume=False)
    return config, folder


def storage_override(args: argparse.Namespace) -> list[str]:
    """`--storage` as a `--set` item; a path made absolute, as every node must read it alike."""
    if not args.storage:
        return []
    check_no_credentials(args.storage)
    storage = args.storage if is_uri(args.storage) else os.path.abspath(args.storage)
    return [f"run.storage={json.dumps(storage)}"]  # quoted: YAML would read `a: b` as a map


def dashboard_warning(args: argparse.Namespace) -> str | None:
    """A warning when the local dashboard would listen beyond this machine."""
    exposed = args.dashboard_host not in (LOCALHOST, "localhost")
    if exposed and not args.no_dashboard and not args.address:
        return DASHBOARD_WARNING.format(host=args.dashboard_host)
    return None


def auth_warning(args: argparse.Namespace) -> str | None:
    """A warning when a local Ray would start with its token authentication turned off."""
    local = not (args.address or os.environ.get("RAY_ADDRESS"))
    if local and os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return AUTH_WARNING
    return None


def main(default_config: str, argv: list[str] | None = None) -> int:
    """Run one experiment end to end: 0 on success, 2 on bad input, 130 when interrupted,
    1 when a trial failed or the run could not be judged or reported."""
    args = parse_args(argv)
    # A model of the user's own imports from the working directory, as with `python -m`
    # (appended: it shadows nothing). Ray gives the trials the same directory.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    phases = Phases()
    try:
        config, folder = open_run(args, default_config)
    except ConfigError as err:
        return refuse(err)
    if config.run.mlflow:  # an unreachable server is refused before anything is made
        from tuning.run.tracking import tracking_client

        try:
            tracking_client(config.run.mlflow)
        except ConfigError as err:
            folder.close()
            return refuse(err)
    # The entry script as it was started (python -m tuning.run_grid gives its path too).
    resume = folder.resume_command(sys.argv[0], args.address, dashboard=not args.no_dashboard)
    # The lock for the whole run; a failed start cleans up.
    with folder, sigterm_as_ctrl_c(), console_logging():
        try:
            with phases.timed("data_load"):
                location = locate_dataset(config.data)  # a wrong --data-dir fails here
                # A resume refuses other data before its split can fail on it.
                check = partial(folder.check_data, source=describe_data(location))
                data = read_dataset(location, check if folder.resume else None)
            check_own_models(config, data.image_shape, len(data.classes))
            if not folder.resume:
                folder.make(config)
            for warning in (dashboard_warning(args), auth_warning(args)):
                if warning:
                    print(warning, file=sys.stderr)
            # Ray's import is slow: here, after the input checks, so bad input is refused at once.
            from tuning.run import pipeline

            options = pipeline.Options(
                address=args.address,
                dashboard=not args.no_dashboard,
                dashboard_host=args.dashboard_host,
                verbose=args.verbose,
                report=not args.no_report,
                resume_command=resume,
            )
            ending = pipeline.run_experiment(
                config=config,
                data=data,
                data_source=describe_data(location),
                folder=folder,
                phases=phases,
                options=options,
            )
        except (ConfigError, DataError) as err:
            folder.close(failed=True)
            return refuse(err)
        except KeyboardInterrupt:  # a second Ctrl-C, or one before Tune's handler was set
            if folder.made and not folder.started:
                folder.close(failed=True)
                print("\ninterrupted before any trial started; nothing to resume", file=sys.stderr)
            else:
                print(f"\ninterrupted; continue with:\n  {resume}", file=sys.stderr)
            return 130
    if ending.notice:
        print(ending.notice, file=sys.stderr)
    return ending.status


def refuse(message: object) -> int:
    """Print a bad-input error; exit status 2."""
    print(f"error: {redact(str(message))}", file=sys.stderr)
    return 2


def describe_data(location: DataLocation) -> str:
    return f"{location.root} ({location.source})" if location.root else location.source


class ConsoleFormatter(logging.Formatter):
    """A record as the console shows it: a notice as it is, a warning as `warning: …`."""

    def format(self, record: logging.LogRecord) -> str:
        message = redact(record.getMessage())
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


@contextlib.contextmanager
def console_logging(loggers: tuple[str, ...] = ("tuning", "trainable")) -> Iterator[None]:
    """The package's log records on the console: notices on standard output, warnings on
    standard error; each logger as it was afterwards (an embedding program sets its own)."""
    notices = logging.StreamHandler(sys.stdout)
    notices.addFilter(lambda record: record.levelno < logging.WARNING)
    warnings = logging.StreamHandler(sys.stderr)
    warnings.setLevel(logging.WARNING)
    saved = []
    for name in loggers:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.setLevel(logging.INFO)
        logger.propagate = False
        for handler in (notices, warnings):
            handler.setFormatter(ConsoleFormatter())
            logger.addHandler(handler)
    try:
        yield
    finally:
        for logger, level, propagate in saved:
            logger.removeHandler(notices)
            logger.removeHandler(warnings)
            logger.setLevel(level)
            logger.propagate = propagate
