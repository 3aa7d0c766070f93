"""The `bakehouse` command line.

Commands that work on resources and jobs talk to a server through the SDK (BAKEHOUSE_BASE_URL,
BAKEHOUSE_API_KEY); `keys`, `demo` and `serve` work on the configured storage directly.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Optional

import typer

from bakehouse.process_defaults import apply_defaults

if TYPE_CHECKING:
    from bakehouse._sdk.models import BakeResponse, JobStatus, OutputPage
    from bakehouse.client import Client

app = typer.Typer(help="bakehouse: stim -> rollout training data, Bread-compatible.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (stored hashed on the configured storage).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

# No envvar here: unset, Store(None) takes the storage from repo_store.settings, where BAKEHOUSE_DATA is read.
DataOption = typer.Option(None, "--data", help="Storage URL: a folder or s3://bucket/prefix (default: BAKEHOUSE_DATA).")
RepoOption = typer.Option(..., "--repo", "-r", help="Repository name.")


@app.callback()
def root() -> None:
    """Storage comes from --data or BAKEHOUSE_DATA (default ./bakehouse-data); servers from BAKEHOUSE_BASE_URL."""


def _fail(error: Exception) -> NoReturn:
    message = getattr(error, "message", None) or str(error)
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(1)


@contextmanager
def _server() -> Iterator[Client]:
    """A client of the configured server; whatever goes wrong talking to it (any BakehouseError: the
    server's answer, no answer, a failed job) or writing what it sent (OSError) ends the command with
    its message and exit code 1."""
    from bakehouse.client import BakehouseError, Client

    try:
        with Client() as client:
            yield client
    except (BakehouseError, OSError) as error:
        _fail(error)


# -- local -----------------------------------------------------------------------------------------


@app.command()
def demo(data: Optional[str] = DataOption, spec: Optional[Path] = typer.Option(None, help="Resource file to run instead of the example.")) -> None:
    """Create the example target and run stim -> rollout on it locally, showing progress."""
    from bakehouse.demo import run_demo

    raise typer.Exit(run_demo(data, spec))


@app.command()
def pursuit(spec: Path = typer.Argument(..., help="Resource file: its first target and bake are round 1."),
            rounds: int = typer.Option(3, min=1, help="Rounds of rollout with the baked model and bake on top."),
            data: Optional[str] = DataOption) -> None:
    """Prompt Pursuit, locally: bake, roll out with the baked model under the same prompt, bake again."""
    from bakehouse.demo import run_pursuit_locally

    raise typer.Exit(run_pursuit_locally(data, spec, rounds))


@app.command()
def serve(host: str = "127.0.0.1", port: int = 8000, data: Optional[str] = DataOption) -> None:
    """Run the API server (OpenAPI docs at /docs). Jobs run as worker processes of this server."""
    import uvicorn

    from bakehouse.api import create_app
    from repo_store import Store

    store = Store(data)
    application = create_app(store)
    if not store.keys.list():
        typer.echo("No API keys yet: create one with `bakehouse keys create --workspace default --scope write`.", err=True)
    try:
        uvicorn.run(application, host=host, port=port, log_level="warning")
    finally:
        application.state.runner.close()


@app.command()
def up(
    port: int = typer.Option(8000, help="The API's port."),
    prefect_port: int = typer.Option(4200, help="The Prefect server's port (UI and API)."),
    data: Optional[str] = DataOption,
    stimuli_per_shard: int = typer.Option(2048, help="Rollout shard size: each shard is one flow run on the GPU pool."),
) -> None:
    """Bring up one machine: Prefect server, work pools, deployments, workers and the API. Ctrl-C stops all."""
    from bakehouse.up import run_up
    from repo_store.settings import get_settings

    run_up(port=port, prefect_port=prefect_port, data_url=data or get_settings().data, stimuli_per_shard=stimuli_per_shard)


models_app = typer.Typer(help="Reserved model names built locally (no model hub needed).", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list() -> None:
    """Every reserved name, whether it is built on this machine, and its folder."""
    from flows.engines.model_cache import list_models

    for model in list_models():
        typer.echo(f"{model.name}\t{'built' if model.built else 'not built'}\t{model.path}\t{model.description}")


@models_app.command("path")
def models_path(name: str) -> None:
    """Print the local folder of a reserved model (built first if needed): transformers loads it."""
    from flows.engines.model_cache import RESERVED, model_path

    if name not in RESERVED:
        _fail(ValueError(f"unknown model {name!r}; reserved names: {', '.join(RESERVED)}"))
    try:
        typer.echo(str(model_path(name)))
    except FileNotFoundError as error:
        _fail(error)


@keys_app.command("create")
def keys_create(
    workspace: str = typer.Option("default", help="The workspace (namespace of repos) the key acts in."),
    scope: str = typer.Option("write", help="read, write or admin."),
    name: str = typer.Option("", help="A label to recognise the key by."),
    data: Optional[str] = DataOption,
) -> None:
    """Create a key. The secret is printed once, alone on the last line: KEY=$(bakehouse keys create | tail -1)."""
    from repo_store import Store

    try:
        key, secret = Store(data).keys.create(workspace=workspace, scope=scope, name=name)  # type: ignore[arg-type]
    except Exception as error:  # noqa: BLE001
        _fail(error)
    typer.echo(f"Created key {key.key_id} (workspace {key.workspace}, scope {key.scope}). It is shown only now:", err=True)
    typer.echo(secret)


@keys_app.command("revoke")
def keys_revoke(key_id: str, data: Optional[str] = DataOption) -> None:
    """Revoke a key by its id: it stops working at once here, within a minute in running servers."""
    from repo_store import Store

    try:
        key = Store(data).keys.revoke(key_id)
    except KeyError as error:
        _fail(Exception(error.args[0]))
    typer.echo(f"Revoked key {key.key_id} (workspace {key.workspace}, scope {key.scope}).")


@keys_app.command("list")
def keys_list(data: Optional[str] = DataOption) -> None:
    """List keys (ids, workspaces and scopes; secrets are not stored)."""
    from repo_store import Store

    for key in Store(data).keys.list():
        typer.echo(f"{key.key_id}\t{key.workspace}\t{key.scope}\t{key.name}")


@keys_app.command("usage")
def keys_usage(
    key_id: Optional[str] = typer.Argument(None, help="A key's id: its requests per hour instead of one line per key."),
    data: Optional[str] = DataOption,
) -> None:
    """Requests in the last 24 hours and when last used: per key (id, workspace, scope, requests, last
    used), or per hour for one key. Running servers write their counts every few seconds."""
    from repo_store import Store

    keys = Store(data).keys
    since = time.time() - 23 * 3600  # the current UTC hour and the 23 before it
    if key_id is None:
        for key in keys.list():
            usage = keys.read_usage(key.key_id, since)
            typer.echo(f"{key.key_id}\t{key.workspace}\t{key.scope}\t{usage.requests}\t{_utc(usage.last_used)}")
        return
    try:
        keys.get(key_id)
    except KeyError as error:
        _fail(Exception(error.args[0]))
    usage = keys.read_usage(key_id, since)
    for hour, requests in usage.requests_per_hour.items():
        typer.echo(f"{hour[:4]}-{hour[4:6]}-{hour[6:8]} {hour[8:]}:00 UTC\t{requests}")
    typer.echo(f"last used\t{_utc(usage.last_used)}")


def _utc(at: float | None) -> str:
    return "never" if at is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


# -- through the API -------------------------------------------------------------------------------


@app.command()
def apply(path: Path) -> None:
    """Create the repo, prompts and targets of a resource file (YAML); existing identical ones are kept."""
    from bakehouse.specs import read_spec_file

    with _server() as client:
        spec = read_spec_file(path)
        repo = spec.repo.repo_name
        client.repo.create(repo_name=repo, base_model=spec.repo.base_model)
        for prompt in spec.prompts:
            data = prompt.model_dump(mode="json", exclude_none=True)
            client.prompts.create(repo, prompt_name=data["prompt_name"], messages=data["messages"], tools=data.get("tools"))
        for target in spec.targets:
            client.targets.create(repo, target_name=target.target_name, template=target.template, overrides=target.overrides)
        for bake in spec.bakes:
            client.bakes.create(repo, bake_name=bake.bake_name, template=bake.template, overrides=bake.overrides)
    typer.echo(f"repo {repo}: {len(spec.prompts)} prompts, {len(spec.targets)} targets, {len(spec.bakes)} bakes")


def _job_commands(kind: str) -> typer.Typer:
    group = typer.Typer(help=f"The {kind} job of a target.", no_args_is_help=True)

    @group.command("run")
    def run(
        target: str,
        repo: str = RepoOption,
        wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow progress until the job ends."),
    ) -> None:
        """Start (or join) the job; with --wait show a progress bar until it ends."""
        _run_job(kind, target, repo, wait)

    @group.command("cancel")
    def cancel(target: str, repo: str = RepoOption) -> None:
        """Stop the job; its finished rows stay and the next `run` resumes from them."""
        with _server() as client:
            job = getattr(client.targets, kind).cancel(target, repo_name=repo)
        typer.echo(f"{kind} {job.status}: cancel requested ({job.lines} rows kept)")

    @group.command("status")
    def status(target: str, repo: str = RepoOption) -> None:
        """Print the job's status as JSON."""
        with _server() as client:
            typer.echo(json.dumps(getattr(client.targets, kind).get(target, repo_name=repo).to_dict(), indent=2))

    @group.command("output")
    def output(
        target: str,
        repo: str = RepoOption,
        limit: int = typer.Option(10, min=1, max=1000),
        offset: int = typer.Option(0, min=0),
        jsonl: bool = typer.Option(False, "--jsonl", help="Rows as JSON lines instead of a table."),
    ) -> None:
        """Show one page of output."""
        with _server() as client:
            page = getattr(client.targets, kind).get_output(target, repo_name=repo, limit=limit, offset=offset)
        _show_page(kind, page, offset, jsonl)

    @group.command("export")
    def export(
        target: str,
        destination: str,
        repo: str = RepoOption,
        partial: bool = typer.Option(False, "--partial", help="Export the rows so far of a job that is not complete."),
    ) -> None:
        """Write all rows to DESTINATION (any fsspec URL; .parquet or .jsonl).

        The rows go to a local temporary file first and DESTINATION is written once all were read:
        an error on the way leaves an existing file as it was."""
        _export(kind, target, destination, repo, partial)

    return group


def _run_job(kind: str, target: str, repo: str, wait: bool) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with _server() as client:
        jobs = getattr(client.targets, kind)
        if not wait:
            typer.echo(json.dumps(jobs.run(target, repo_name=repo, poll=False).to_dict()))
            return
        with Progress(TextColumn(f"{kind:>8}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                      TextColumn("{task.fields[lines]} rows {task.fields[status]}"), TimeElapsedColumn()) as bars:
            task = bars.add_task(kind, total=100, lines=0, status="")

            def show(job: JobStatus) -> None:
                bars.update(task, completed=job.progress_percent or 0, lines=job.lines or 0, status=job.status)

            job = jobs.run(target, repo_name=repo, poll_interval=1.0, on_progress=show)
    typer.echo(f"{kind} {job.status}: {job.lines} rows")


def _show_page(kind: str, page: OutputPage, offset: int, jsonl: bool) -> None:
    """One page of rows as JSON lines, or as a table of their questions (and responses)."""
    from rich.console import Console
    from rich.table import Table

    if jsonl:
        for row in page.output:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    table = Table(title=f"{kind} rows {offset}-{offset + len(page.output)} of {page.lines}")
    columns = ["stimulus_id", "question"] + (["trajectory_id", "response"] if kind == "rollout" else [])
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in page.output:
        question = row["conditioned_stimulus"]["messages"][-1]["content"]
        cells = [str(row.get("stimulus_id")), str(question)[:80]]
        if kind == "rollout":
            response = (row.get("response") or {}).get("content") or f"[error] {row.get('error')}"
            cells += [str(row.get("trajectory_id")), response[:80]]
        table.add_row(*cells)
    Console().print(table)


def _export(kind: str, target: str, destination: str, repo: str, partial: bool) -> None:
    import tempfile

    import fsspec

    if not destination.endswith((".parquet", ".jsonl", ".ndjson")):
        _fail(Exception("destination must end in .parquet or .jsonl"))
    with _server() as client, tempfile.TemporaryDirectory(prefix="bakehouse-export-") as scratch:
        jobs, local = getattr(client.targets, kind), str(Path(scratch) / "rows")
        if destination.endswith(".parquet"):
            frame = jobs.read_dataframe(target, repo_name=repo, allow_partial=partial)
            frame.write_parquet(local)
            count = frame.height
        else:
            count = 0
            with open(local, "w", encoding="utf-8") as handle:
                for row in jobs.iter_output(target, repo_name=repo, allow_partial=partial):
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                    count += 1
        fs, path = fsspec.core.url_to_fs(destination)
        fs.put_file(local, path)
    typer.echo(f"wrote {count} rows to {destination}")


app.add_typer(_job_commands("stim"), name="stim")
app.add_typer(_job_commands("rollout"), name="rollout")

bake_app = typer.Typer(help="Bakes: train the teacher prompt into the model (define them with `apply`).", no_args_is_help=True)
app.add_typer(bake_app, name="bake")


@bake_app.command("run")
def bake_run(
    bake: str,
    repo: str = RepoOption,
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow training until the bake ends."),
) -> None:
    """Start (or join) a bake; with --wait show a progress bar with the latest loss."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with _server() as client:
        if not wait:
            typer.echo(json.dumps(client.bakes.run(bake, repo_name=repo, poll=False).to_dict()))
            return
        with Progress(TextColumn("    bake"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                      TextColumn("loss {task.fields[loss]} {task.fields[status]}"), TimeElapsedColumn()) as bars:
            task = bars.add_task("bake", total=100, loss="-", status="")

            def show(job: BakeResponse) -> None:
                loss = (job.loss or {}).get("latest_loss")
                bars.update(task, completed=job.progress_percent or 0, status=job.status,
                            loss="-" if loss is None else f"{loss:.4g}")

            job = client.bakes.run(bake, repo_name=repo, poll_interval=1.0, on_progress=show)
    typer.echo(f"bake {job.status}: final loss {(job.loss or {}).get('final_loss')}; models {job.model_name}")


@bake_app.command("status")
def bake_status(bake: str, repo: str = RepoOption) -> None:
    """Print the bake's status, loss and checkpoints as JSON."""
    with _server() as client:
        typer.echo(json.dumps(client.bakes.get(bake, repo_name=repo).to_dict(), indent=2))


@bake_app.command("download")
def bake_download(
    bake: str,
    destination: Path,
    repo: str = RepoOption,
    checkpoint: Optional[int] = typer.Option(None, help="The checkpoint's step (default: the latest)."),
) -> None:
    """Save a checkpoint's adapter (.tar.gz: adapter_model.safetensors, adapter_config.json) to DESTINATION."""
    import httpx

    from bakehouse.client import APIConnectionError

    with _server() as client:
        link = client.bakes.download(bake, repo_name=repo, checkpoint=checkpoint)
        try:
            with httpx.stream("GET", link.url, timeout=600) as response:
                if response.status_code != 200:
                    _fail(Exception(f"download refused ({response.status_code}): {response.read().decode(errors='replace')}"))
                with open(destination, "wb") as handle:
                    for block in response.iter_bytes():
                        handle.write(block)
        except httpx.TransportError as error:
            raise APIConnectionError.of(error) from error  # the link's host: reported as the SDK reports its own
    typer.echo(f"checkpoint {link.checkpoint} of {bake} saved to {destination}")


@bake_app.command("metrics")
def bake_metrics(bake: str, repo: str = RepoOption) -> None:
    """Print the bake's metrics rows as JSON lines (one per logged step)."""
    with _server() as client:
        for row in client.bakes.iter_metrics(bake, repo_name=repo):
            sys.stdout.write(json.dumps(row) + "\n")


recipe_app = typer.Typer(help="Recipes: how a bake was made, and making it again elsewhere.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")


@recipe_app.command("plan")
def recipe_plan(bake: str, repo: str = RepoOption) -> None:
    """Print the bake's recreation plan as JSON (the input of `recipe replay`)."""
    with _server() as client:
        typer.echo(json.dumps(client.recipes.get_recreation_plan(bake, repo_name=repo).to_dict(), indent=2))


@recipe_app.command("replay")
def recipe_replay(
    plan: Path,
    repo: str = typer.Option(..., "--repo", "-r", help="The repository to make it in (created with the plan's base model)."),
    train: bool = typer.Option(True, "--train/--no-train", help=(
        "--no-train: create the bakes but run none, and skip the steps that need a bake's checkpoint.")),
) -> None:
    """Run a recreation plan's steps in order into another repo of the configured server, waiting for each job."""
    from bakehouse.replay import replay_plan

    def show(step) -> None:
        note = f" ({step.because})" if step.because else ""
        typer.echo(f"{step.step:>3} {step.action} {step.resource_name}: {step.outcome}{note}")

    with _server() as client:
        steps = replay_plan(client, json.loads(plan.read_text()), repo, train=train, on_step=show)
    done = sum(step.outcome == "done" for step in steps)
    typer.echo(f"replayed into repo {repo}: {done} steps done, {len(steps) - done} skipped")


def main() -> None:
    apply_defaults()
    app()


if __name__ == "__main__":
    main()
