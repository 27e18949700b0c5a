"""The simulators' commands, `cemsd sim` and `cemsd demo`, added to the cemsd program
through the `cemsd.commands` entry point group (pyproject.toml): cemsd never imports the
simulators."""

from __future__ import annotations

import asyncio
import math
import sys

import click

from cemsd.cliargs import SPEED, Positive
from cemsd.errors import ConfigError


@click.command()
@click.option("--scenario", "scenario_file", required=True, type=click.Path(dir_okay=False))
@click.option("--clock-file", default=None, type=click.Path(dir_okay=False),
              help="Follow the simulated time a daemon publishes (cemsd run --clock-file).")
@click.option("--start-now", is_flag=True, help="On the wall clock, start the scenario now.")
@click.option("--ready-file", default=None, type=click.Path(dir_okay=False),
              help="Write this file (the simulator's pid) once every bus is served.")
def sim(scenario_file: str, clock_file: str | None, start_now: bool,
        ready_file: str | None) -> None:
    """Serve the simulated instruments of a scenario until SIGTERM."""
    from simulators.runner import run_simulator
    from simulators.scenario import load_scenario

    try:
        scenario = load_scenario(scenario_file)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    try:
        asyncio.run(run_simulator(scenario, clock_file, start_now, ready_file))
    except RuntimeError as exc:
        click.echo(f"cemsd sim: {exc}", err=True)
        sys.exit(1)


@click.command()
@click.option("--config", "config_file", default="config/demo.toml", show_default=True,
              type=click.Path(dir_okay=False))
@click.option("--scenario", "scenario_file", default="config/demo-scenario.toml",
              show_default=True, type=click.Path(dir_okay=False))
@click.option("--hours", "n_hours", default=24.0, show_default=True,
              type=Positive("number of hours", 24 * 366), help="Simulated hours to run.")
@click.option("--speed", default="max", show_default=True, type=SPEED,
              help="Speed factor of the simulated clock, or 'max'.")
def demo(config_file: str, scenario_file: str, n_hours: float, speed: float) -> None:
    """Run the bundled simulators and the daemon for a simulated day; print the hours."""
    from simulators.demo import run_demo

    sys.exit(run_demo(config_file, scenario_file, n_hours,
                      "max" if math.isinf(speed) else f"{speed:g}"))
