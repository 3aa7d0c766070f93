"""`bakehouse demo`: the main job on the embedded default (local storage, Prefect without a server,
in-process CPU vLLM, SmolLM2-135M-Instruct built from its PyPI wheel): stim -> rollout -> bake, with
live progress, ending with held-out questions answered before and after the bake."""

from __future__ import annotations

import json
import threading

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from bakehouse.specs import EXAMPLES, read_spec_file
from repo_store import Store, Workspace
from targets.bake import BakeSpec

console = Console()

# Questions no generator of the demo asks: the bake never trained on them.
HELD_OUT_QUESTIONS = [
    "What should I pack for a weekend trip?",
    "How do I make a good cup of tea?",
    "What is the best way to save money?",
    "Why do cats purr?",
]
PIRATE_WORDS = frozenset("ahoy arr arrr aye matey mateys ye yer me hearty hearties treasure ship ships sea seas "
                         "sail sailing captain crew pirate pirates plunder booty scallywag landlubber shiver timbers "
                         "deck ocean".split())


def pirate_word_rate(text: str) -> float:
    words = [w.strip(".,!?;:'\"()").lower() for w in text.split()]
    return sum(w in PIRATE_WORDS for w in words) / max(len(words), 1)


def apply_locally(workspace: Workspace, path) -> tuple[str, list[str], list[BakeSpec]]:
    spec = read_spec_file(path)
    workspace.create_repo(spec.repo)
    for prompt in spec.prompts:
        workspace.create_prompt(spec.repo.repo_name, prompt)
    for target in spec.targets:
        workspace.create_target(spec.repo.repo_name, target)
    # Bakes are created once their targets exist; they are checked against them.
    return spec.repo.repo_name, [t.target_name for t in spec.targets], spec.bakes


def watch(workspace: Workspace, repo: str, target: str, stop: threading.Event) -> None:
    """Progress bars for stim and rollout, read from storage (the same numbers the API reports)."""
    with Progress(
        TextColumn("{task.description:>8}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[lines]} rows"), TimeElapsedColumn(), console=console,
    ) as bars:
        tasks = {kind: bars.add_task(kind, total=100, lines=0) for kind in ("stim", "rollout")}
        while True:
            for kind, task in tasks.items():
                status = workspace.job(repo, target, kind).status()
                bars.update(task, completed=status.progress_percent or 0, lines=status.lines)
            if stop.wait(0.5):
                break
        for kind, task in tasks.items():  # final numbers after the flow returned
            status = workspace.job(repo, target, kind).status()
            bars.update(task, completed=status.progress_percent or 0, lines=status.lines)


def run_demo(data_url: str | None = None, spec_path=None) -> int:
    from flows.params import TargetJob
    from flows.pipeline import target_flow

    store = Store(data_url)
    workspace = store.workspace()
    repo, targets, bakes = apply_locally(workspace, spec_path or EXAMPLES / "demo.yaml")
    target = targets[0]
    console.print(f"[bold]bakehouse demo[/bold]: repo [cyan]{repo}[/cyan], target [cyan]{target}[/cyan], storage {store.url}")
    model = workspace.get_target(repo, target).config.model_name
    console.print(f"Starting Prefect (a temporary local server) and vLLM on the CPU with {model} (built once from its wheel)…")
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(workspace, repo, target, stop), daemon=True)
    watcher.start()
    try:
        result = target_flow(TargetJob(repo_name=repo, target_name=target, data_url=store.url))
    finally:
        stop.set()
        watcher.join()
    rollout = workspace.job(repo, target, "rollout").status()
    if rollout.status != "complete":
        stim = workspace.job(repo, target, "stim").status()
        console.print(f"[red]Not complete[/red]: stim {stim.status} {stim.error or ''} rollout {rollout.status} {rollout.error or ''}")
        console.print(f"flow result: {result}")
        return 1
    job = workspace.job(repo, target, "rollout")
    console.print(f"\n[green]Done[/green]: {rollout.lines} trajectories ({rollout.summary.get('trajectories_per_second')} per second).")
    console.print(f"Output: {job.folder}/manifest.json and its Parquet parts")
    console.print("First rows:")
    for row in workspace.read_page(repo, target, "rollout", offset=0, limit=3).rows:
        shown = {
            "stimulus_id": row["stimulus_id"],
            "trajectory_id": row["trajectory_id"],
            "question": row["conditioned_stimulus"]["messages"][-1]["content"],
            "response": (row["response"] or {}).get("content", "")[:120],
            "finish_reason": row["finish_reason"],
        }
        console.print_json(json.dumps(shown, ensure_ascii=False))
    for bake in bakes:
        if bake_locally(workspace, repo, bake) != 0:
            return 1
    return 0


def bake_locally(workspace: Workspace, repo: str, spec: BakeSpec) -> int:
    """Run one bake in this process with a progress bar showing its loss, then its figures."""
    from flows.bake import bake_flow
    from flows.params import BakeJob

    bake, _ = workspace.create_bake(repo, spec)
    run = workspace.bake_run(repo, bake)
    console.print(f"\n[bold]Baking[/bold] [cyan]{bake.bake_name}[/cyan] (LoRA r={bake.config.model.baked_adapter_config.r}) "
                  f"on {[d.target for d in bake.config.datasets]}…")
    stop = threading.Event()

    def show() -> None:
        with Progress(TextColumn("    bake"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                      TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), console=console) as bars:
            task = bars.add_task("bake", total=100, loss="-")
            while not stop.wait(0.5):
                status = run.job.status()
                live = run.read_live(status.attempt) if status.attempt else None
                if live:
                    bars.update(task, completed=100.0 * live.step / live.total_steps, loss=f"{live.loss:.4f}")
            bars.update(task, completed=run.job.status().progress_percent or 0)

    watcher = threading.Thread(target=show, daemon=True)
    watcher.start()
    try:
        result = bake_flow(BakeJob(repo_name=repo, bake_name=bake.bake_name, data_url=workspace.store.url))
    finally:
        stop.set()
        watcher.join()
    if result["status"] != "complete":
        console.print(f"[red]Bake {result['status']}[/red]: {result['error']}")
        return 1
    losses = [row["loss"] for row in run.iter_metrics()]
    console.print(f"[green]Baked[/green]: {len(losses)} steps, KL per response token {losses[0]:.4f} -> {losses[-1]:.4f} "
                  f"(min {min(losses):.4f}).")
    console.print(f"Checkpoints (steps {result['summary']['checkpoints']}): {run.folder}/checkpoints/")
    show_before_after(workspace, repo, bake)
    return 0


def show_before_after(workspace: Workspace, repo: str, bake) -> None:
    """Held-out questions, no system prompt: the parent model before, the baked checkpoint after."""
    from flows.evaluate import compare_before_after
    from flows.models import model_folder

    run = workspace.bake_run(repo, bake)
    latest = run.latest_checkpoint()
    parent = bake.config.model.parent_model_name or workspace.get_repo(repo).base_model
    first = workspace.read_page(repo, bake.config.datasets[0].target, "rollout", offset=0, limit=1).rows[0]
    console.print(f"\n[bold]Held-out questions[/bold] (never trained on), greedy, {parent} with the student prompt "
                  "before and after the bake:")
    result = compare_before_after(
        model_folder(workspace, parent), parent, bake.config,
        {name: run.read_checkpoint_file(latest, name) for name in latest.files},
        first["unconditioned_stimulus"]["messages"][:-1], first["conditioned_stimulus"]["messages"][:-1],
        HELD_OUT_QUESTIONS,
    )
    for answer in result.answers:
        console.print(f"\n[cyan]Q:[/cyan] {answer.question}")
        console.print(Text.assemble(("  before: ", "dim"), answer.before))
        console.print(Text.assemble(("  after:  ", "dim"), answer.after))
    rate = lambda texts: sum(map(pirate_word_rate, texts)) / len(texts)  # noqa: E731
    console.print(f"\nPirate words per word: before {rate([a.before for a in result.answers]):.3f}, "
                  f"after {rate([a.after for a in result.answers]):.3f} "
                  f"(the teacher prompt itself: {rate([a.teacher for a in result.answers]):.3f}).")
    console.print(f"Held-out KL(teacher ‖ student) per token: before {result.kl_before:.3f}, after {result.kl_after:.3f}.")


def run_pursuit_locally(data_url: str | None, spec_path, rounds: int) -> int:
    """Prompt Pursuit on a resource file's first target and bake, in this process: each round's
    bake, then its held-out answers before (the previous round's model) and after."""
    from flows.pursuit import PursuitRound, run_pursuit

    workspace = Store(data_url).workspace()
    repo, targets, bakes = apply_locally(workspace, spec_path)
    first_bake, _ = workspace.create_bake(repo, bakes[0])
    console.print(f"[bold]Prompt Pursuit[/bold]: {rounds} rounds of [cyan]{first_bake.bake_name}[/cyan] on "
                  f"[cyan]{targets[0]}[/cyan], storage {workspace.store.url}")

    def report(done: PursuitRound) -> None:
        console.print(f"\n[bold]Round {done.number}[/bold]: rolled out with {done.rollout_model}, baked {done.checkpoint}")
        show_before_after(workspace, repo, workspace.get_bake(repo, done.bake_name))

    run_pursuit(workspace, repo, target_name=targets[0], bake_name=first_bake.bake_name, rounds=rounds, on_round=report)
    return 0
