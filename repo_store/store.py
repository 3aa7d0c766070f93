"""Repos, prompts and targets on storage: immutable resources, one namespace per workspace.

    workspaces/<ws>/repos/<repo>/repo.json
    workspaces/<ws>/repos/<repo>/prompts/<prompt>.json
    workspaces/<ws>/repos/<repo>/targets/<target>/target.json
    workspaces/<ws>/repos/<repo>/targets/<target>/jobs/<target_id>/{stim,rollout}/   (see repo_store.jobs)
    workspaces/<ws>/repos/<repo>/bakes/<bake>/bake.json, runs/<bake_id>/          (see repo_store.bakes)

Each target gets a fresh random id when created, and its jobs live under it: a target deleted and
created again never meets the old target's files or anything cached about them.

Creating is create-if-absent: a new resource reports `created=True`; an identical one returns the
stored copy with `created=False`; a different one raises Conflict. Nothing is ever overwritten.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

from targets import (
    Conflict,
    InvalidInput,
    NotFound,
    PromptSpec,
    RepoSpec,
    TargetConfig,
    TargetSpec,
    config_hash,
    parse,
    resolve_target,
    validate_name,
)
from targets.bake import BakeConfig, BakeSpec
from targets.config import deep_merge, normalise_overrides

from repo_store.bakes import BakeRun
from repo_store.downloads import DownloadSigner
from repo_store.datasets import check_source, dataset_url, named_dataset_column, read_questions, read_text
from repo_store.jobs import Job, JobKind
from repo_store.keys import KeyStore
from repo_store.pages import FooterCache, Page, read_page
from repo_store.storage import Storage

DEFAULT_WORKSPACE = "default"
MAX_CACHED_JOBS = 1024


@dataclass(frozen=True)
class StoredTarget:
    target_name: str
    template: str
    overrides: dict[str, Any] | None
    config: TargetConfig
    target_id: str

    def to_json(self) -> dict[str, Any]:
        return {
            "target_id": self.target_id,
            "target_name": self.target_name,
            "template": self.template,
            "overrides": self.overrides,
            "config": self.config.model_dump(mode="json", exclude_none=True),
            "config_hash": config_hash(self.config),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoredTarget:
        return cls(data["target_name"], data["template"], data.get("overrides"),
                   TargetConfig.model_validate(data["config"]), data.get("target_id") or data["config_hash"][:16])


@dataclass(frozen=True)
class StoredBake:
    bake_name: str
    template: str
    overrides: dict[str, Any] | None
    config: BakeConfig
    bake_id: str  # like target_id: a bake deleted and created again never meets the old one's files

    def to_json(self) -> dict[str, Any]:
        return {
            "bake_name": self.bake_name,
            "template": self.template,
            "overrides": self.overrides,
            "config": self.config.model_dump(mode="json"),
            "bake_id": self.bake_id,
            "config_hash": config_hash(self.config),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoredBake:
        return cls(data["bake_name"], data["template"], data.get("overrides"),
                   BakeConfig.model_validate(data["config"]), data["bake_id"])


@dataclass(frozen=True)
class DeletedOutput:
    """What deleting a job's output removed."""

    lines: int  # the output lines the job had
    files: int  # every file of the job: plan, claims, heartbeats, chunk markers, parts, manifest


class Store:
    """Entry point: `Store(url)` then `.workspace(name)`. One instance per process is enough."""

    def __init__(self, url: str | None = None):
        self.storage = Storage(url)
        self.footers = FooterCache()
        self.keys = KeyStore(self.storage)
        self.downloads = DownloadSigner(self.storage)
        self._jobs: LRUCache[str, Job] = LRUCache(maxsize=MAX_CACHED_JOBS)
        self._jobs_lock = threading.Lock()  # request threads share it; cachetools' caches are not thread-safe

    @property
    def url(self) -> str:
        return self.storage.url

    def read_page(self, job: Job, *, offset: int = 0, limit: int = 100, include_tokens: bool = False) -> Page:
        """Rows [offset, offset + limit) of a job's output (parsed footers cached across calls);
        `include_tokens`: also the rollout's token columns (repo_store.parts.TOKEN_COLUMNS)."""
        return read_page(job, offset=offset, limit=limit, footers=self.footers, include_tokens=include_tokens)

    def workspace(self, name: str = DEFAULT_WORKSPACE) -> Workspace:
        return Workspace(self, validate_name(name, "workspace"))

    def job(self, folder: str, kind: JobKind) -> Job:
        # One Job object per folder keeps its immutable-marker cache warm across requests.
        key = f"{folder}/{kind}"
        with self._jobs_lock:
            job = self._jobs.get(key)
            if job is None:
                job = self._jobs[key] = Job(self.storage, key, kind)
            return job

    def forget_job(self, job: Job) -> None:
        """Drop a job from the cache once its folder is deleted: its parsed manifest and markers no
        longer hold. Other processes over the same storage know nothing of it: one that had read
        the manifest reports the job complete until the entry leaves its cache."""
        with self._jobs_lock:
            self._jobs.pop(job.folder, None)


class Workspace:
    def __init__(self, store: Store, name: str):
        self.store = store
        self.storage = store.storage
        self.name = name

    def _path(self, *parts: str) -> str:
        return self.storage.path("workspaces", self.name, "repos", *parts)

    def _create_immutable(self, path: str, content: dict[str, Any], same: Any, what: str) -> tuple[dict[str, Any], bool]:
        if self.storage.create_json(path, content):
            return content, True
        existing = self.storage.read_json(path)
        if existing is None:  # deleted between the two calls: try once more
            return self._create_immutable(path, content, same, what)
        if not same(existing):
            raise Conflict(what)
        return existing, False

    # -- repos ---------------------------------------------------------------------------------

    def create_repo(self, spec: RepoSpec) -> tuple[RepoSpec, bool]:
        data, created = self._create_immutable(
            self._path(spec.repo_name, "repo.json"),
            spec.model_dump(),
            lambda old: old["base_model"] == spec.base_model,
            f"Repository '{spec.repo_name}' already exists with a different base_model. "
            "Repository base_model is immutable and cannot be changed.",
        )
        return RepoSpec.model_validate(data), created

    def get_repo(self, repo_name: str) -> RepoSpec:
        validate_name(repo_name, "repo_name")
        data = self.storage.read_json(self._path(repo_name, "repo.json"))
        if data is None:
            raise NotFound(f"Repository '{repo_name}' not found")
        return RepoSpec.model_validate(data)

    def list_repos(self) -> list[str]:
        return self.storage.list_names(self._path())

    # -- prompts -------------------------------------------------------------------------------

    def create_prompt(self, repo_name: str, spec: PromptSpec) -> tuple[PromptSpec, bool]:
        self.get_repo(repo_name)
        content = spec.model_dump(mode="json", exclude_none=True)
        data, created = self._create_immutable(
            self._path(repo_name, "prompts", f"{spec.prompt_name}.json"),
            content,
            lambda old: old == content,
            f"Prompt '{spec.prompt_name}' already exists with different content. "
            "Prompts are immutable and cannot be changed.",
        )
        return PromptSpec.model_validate(data), created

    def get_prompt(self, repo_name: str, prompt_name: str) -> PromptSpec:
        validate_name(prompt_name, "prompt_name")
        data = self.storage.read_json(self._path(repo_name, "prompts", f"{prompt_name}.json"))
        if data is None:
            self.get_repo(repo_name)
            raise NotFound(f"Prompt '{prompt_name}' not found in repository '{repo_name}'")
        return PromptSpec.model_validate(data)

    def list_prompts(self, repo_name: str) -> list[str]:
        self.get_repo(repo_name)
        return [n.removesuffix(".json") for n in self.storage.list_names(self._path(repo_name, "prompts"))]

    # -- targets -------------------------------------------------------------------------------

    def merge_target_config(self, repo_name: str, spec: TargetSpec) -> TargetConfig:
        """Template + overrides, well-formed but not yet checked against this repo."""
        template_config = None
        if spec.template != "default":
            try:
                template_config = self.get_target(repo_name, spec.template).config
            except NotFound:
                raise InvalidInput(f"Template '{spec.template}' not found") from None
        return resolve_target(spec.overrides, template_config)

    def resolve(self, repo_name: str, spec: TargetSpec) -> TargetConfig:
        """The config `spec` stands for: template + overrides, checked against this repo."""
        config = self.merge_target_config(repo_name, spec)
        missing = config.missing_stim_fields()
        if missing:
            raise InvalidInput(f"Missing required stim fields: {missing}")
        for field in ("teacher_prompt", "student_prompt"):
            name = getattr(config, field)
            try:
                self.get_prompt(repo_name, name)
            except NotFound:
                raise InvalidInput(f"{field} '{name}' is not a prompt in repository '{repo_name}'") from None
        return config

    def create_target(self, repo_name: str, spec: TargetSpec) -> tuple[StoredTarget, bool]:
        self.get_repo(repo_name)
        overrides = normalise_overrides(spec.overrides) if spec.overrides else spec.overrides
        target = StoredTarget(spec.target_name, spec.template, overrides, self.resolve(repo_name, spec), uuid.uuid4().hex[:16])
        content = target.to_json()
        data, created = self._create_immutable(
            self._target_folder(repo_name, spec.target_name) + "/target.json",
            content,
            lambda old: old["config_hash"] == content["config_hash"],
            f"Target '{spec.target_name}' already exists with different configuration. "
            "Targets are immutable and cannot be changed.",
        )
        return StoredTarget.from_json(data), created

    def get_target(self, repo_name: str, target_name: str) -> StoredTarget:
        validate_name(target_name, "target_name")
        data = self.storage.read_json(self._target_folder(repo_name, target_name) + "/target.json")
        if data is None:
            self.get_repo(repo_name)
            raise NotFound(f"Target '{target_name}' not found in repository '{repo_name}'")
        return StoredTarget.from_json(data)

    def list_targets(self, repo_name: str) -> list[str]:
        self.get_repo(repo_name)
        return self.storage.list_names(self._path(repo_name, "targets"))

    def delete_target(self, repo_name: str, target_name: str) -> None:
        self.get_target(repo_name, target_name)
        for kind in ("stim", "rollout"):
            if self.job(repo_name, target_name, kind).status().status == "running":
                raise InvalidInput(f"Target '{target_name}' has a running {kind} job; wait for it or cancel it first")
        folder = self._target_folder(repo_name, target_name)
        # Jobs first, target.json last: a half-deleted target is still a target and can be deleted again.
        self.storage.delete_tree(f"{folder}/jobs")
        self.storage.delete_tree(folder)

    def _target_folder(self, repo_name: str, target_name: str) -> str:
        return self._path(validate_name(repo_name, "repo_name"), "targets", validate_name(target_name, "target_name"))

    # -- bakes ---------------------------------------------------------------------------------

    def resolve_bake(self, repo_name: str, spec: BakeSpec) -> BakeConfig:
        """The config `spec` stands for: Bread's default or a template bake, plus overrides."""
        base: dict[str, Any] = {}
        if spec.template != "default":
            try:
                base = self.get_bake(repo_name, spec.template).config.model_dump(mode="json")
            except NotFound:
                raise InvalidInput(f"Template '{spec.template}' not found") from None
        config = parse(BakeConfig, deep_merge(base, spec.overrides or {}), "bake config")
        for dataset in config.datasets:
            try:
                self.get_target(repo_name, dataset.target)
            except NotFound:
                raise InvalidInput(f"Invalid dataset reference: target '{dataset.target}' not found") from None
        return config

    def create_bake(self, repo_name: str, spec: BakeSpec) -> tuple[StoredBake, bool]:
        self.get_repo(repo_name)
        bake = StoredBake(spec.bake_name, spec.template, spec.overrides, self.resolve_bake(repo_name, spec), uuid.uuid4().hex[:16])
        content = bake.to_json()
        data, created = self._create_immutable(
            self._path(repo_name, "bakes", spec.bake_name, "bake.json"),
            content,
            lambda old: old["config_hash"] == content["config_hash"],
            f"Bake '{spec.bake_name}' already exists with different configuration. Bakes are immutable and cannot be changed.",
        )
        return StoredBake.from_json(data), created

    def get_bake(self, repo_name: str, bake_name: str) -> StoredBake:
        validate_name(bake_name, "bake_name")
        data = self.storage.read_json(self._path(repo_name, "bakes", bake_name, "bake.json"))
        if data is None:
            self.get_repo(repo_name)
            raise NotFound(f"Bake '{bake_name}' not found in repository '{repo_name}'")
        return StoredBake.from_json(data)

    def list_bakes(self, repo_name: str) -> list[str]:
        self.get_repo(repo_name)
        return self.storage.list_names(self._path(repo_name, "bakes"))

    def bake_dataset_lines(self, repo_name: str, config: BakeConfig) -> list[int]:
        """Each dataset target's number of trajectories; InvalidInput unless every rollout is complete."""
        if not config.datasets:
            raise InvalidInput("Bake has no datasets: set 'datasets' to [{target, weight}]")
        lines = []
        for dataset in config.datasets:
            status = self.job(repo_name, dataset.target, "rollout").status()
            if status.status != "complete":
                raise InvalidInput("Target rollouts must complete before starting bake")
            lines.append(status.lines)
        return lines

    def bake_run(self, repo_name: str, bake: StoredBake) -> BakeRun:
        folder = self._path(repo_name, "bakes", bake.bake_name, "runs", bake.bake_id)
        return BakeRun(self.storage, folder, self.store.job(folder, "bake"))

    def delete_bake(self, repo_name: str, bake_name: str) -> None:
        bake = self.get_bake(repo_name, bake_name)
        if self.bake_run(repo_name, bake).job.status().status == "running":
            raise InvalidInput(f"Bake '{bake_name}' is running; wait for it or cancel it first")
        folder = self._path(repo_name, "bakes", bake_name)
        self.storage.delete_tree(f"{folder}/runs")  # runs first: a half-deleted bake is still a bake
        self.storage.delete_tree(folder)

    # -- files users point generators at -----------------------------------------------------

    def read_dataset_questions(self, dataset: str, column: str | None) -> list[str]:
        column = column or named_dataset_column(dataset)
        return read_questions(check_source(dataset_url(dataset), self.storage.url), column)

    def read_template(self, url: str) -> str:
        return read_text(check_source(url, self.storage.url))

    # -- jobs ----------------------------------------------------------------------------------

    def job(self, repo_name: str, target_name: str, kind: JobKind) -> Job:
        """The stim or rollout job of a target (NotFound when the target does not exist)."""
        return self.job_of(repo_name, self.get_target(repo_name, target_name), kind)

    def job_of(self, repo_name: str, target: StoredTarget, kind: JobKind) -> Job:
        """The job of a target already read (saves reading target.json again)."""
        return self.store.job(f"{self._target_folder(repo_name, target.target_name)}/jobs/{target.target_id}", kind)

    def delete_job(self, repo_name: str, target_name: str, kind: JobKind) -> DeletedOutput:
        """Remove a stim or rollout job's whole folder: the job reads `not_started` again and a new
        start makes it anew. NotFound when it was never started."""
        target = self.get_target(repo_name, target_name)
        job = self.job_of(repo_name, target, kind)
        status = job.status()
        if status.status == "running":
            raise InvalidInput(f"The {kind} job of target '{target_name}' is running; wait for it or cancel it first")
        if kind == "stim" and self.storage.list_names(self.job_of(repo_name, target, "rollout").folder):
            raise InvalidInput(f"Target '{target_name}' has a rollout made from these stimuli; delete the rollout first")
        if kind == "rollout":
            self._refuse_while_bakes_read(repo_name, target_name)
        files = self.storage.list_files(job.folder)
        if not files:
            raise NotFound(f"The {kind} job of target '{target_name}' was never started: it has no output to delete")
        # Commit points first: a delete cut short leaves a job that reads unfinished and can be
        # deleted again or resumed, never a manifest or marker naming parts that are gone.
        for commit_point in (job.layout.manifest, job.layout.chunks):
            self.storage.delete_tree(commit_point)
        self.storage.delete_tree(job.folder)
        self.store.forget_job(job)
        return DeletedOutput(status.lines, len(files))

    def _refuse_while_bakes_read(self, repo_name: str, target_name: str) -> None:
        """A running bake reads its dataset targets' rollouts page by page until it ends."""
        for bake_name in self.list_bakes(repo_name):
            bake = self.get_bake(repo_name, bake_name)
            reads_target = any(dataset.target == target_name for dataset in bake.config.datasets)
            if reads_target and self.bake_run(repo_name, bake).job.status().status == "running":
                raise InvalidInput(f"Bake '{bake_name}' is running on the rollout of target '{target_name}'; "
                                   "wait for it or cancel it first")

    def read_page(
        self, repo_name: str, target_name: str, kind: JobKind, *, offset: int = 0, limit: int = 100, include_tokens: bool = False
    ) -> Page:
        return self.store.read_page(self.job(repo_name, target_name, kind), offset=offset, limit=limit,
                                    include_tokens=include_tokens)

