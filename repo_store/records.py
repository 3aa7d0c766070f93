"""The job protocol's files, as typed records, and the one place that names their paths.

These files outlive any version of the code that wrote them: a job started by one version is
resumed, paged and listed by the next. So every record is validated when it is read, and carries
a version `v`. A reader accepts its own version and older ones; a record from a newer writer, or one
that does not have the shape of its kind (a broken writer, a truncated upload), raises
`RecordError` naming the file instead of being misread. Records written before versioning (no `v`)
have version 1's shape.

The folder of one job (see repo_store.jobs for what each file means; a bake's checkpoints and live
step are paths of its run folder, named in repo_store.bakes):

    plan.json  manifest.json
    claims/ heartbeats/ failures/ <gen:06d>.json      (also under shards/<scope>/ for one shard)
    cancels/ starts/ <gen:06d>.json
    chunks/<index:06d>.json   parts/<index:06d>-g<gen:06d>-<uid>.parquet   parts/compact-...
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from repo_store.parts import PartInfo

RECORD_VERSION = 1

R = TypeVar("R", bound="Record")


class RecordError(Exception):
    """A protocol file this version of bakehouse cannot read (written by a newer one, or broken)."""


class Record(BaseModel):
    # Fields a later version adds to a record of the same version are ignored, not refused: only a
    # change of shape bumps `v`.
    # NaN and infinity (a diverged loss, an infinite gradient norm) are kept as JSON's `NaN` and
    # `Infinity`, as json.dumps writes them, not turned into null.
    model_config = ConfigDict(frozen=True, extra="ignore", ser_json_inf_nan="constants")
    kind_of_file: ClassVar[str] = "record"

    v: int = RECORD_VERSION

    @model_validator(mode="before")
    @classmethod
    def _known_version(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("v"), int) and data["v"] > RECORD_VERSION:
            raise ValueError(f"written by a newer bakehouse (record version {data['v']}; this version reads up "
                             f"to {RECORD_VERSION}): upgrade bakehouse to read it")
        return data

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_bytes(cls: type[R], data: bytes, *, path: str = "") -> R:
        try:
            parsed = json.loads(data)
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
            raise RecordError(f"{path or cls.kind_of_file}: unreadable {cls.kind_of_file} (not JSON: {error})") from None
        return cls.from_json(parsed, path=path)

    @classmethod
    def from_json(cls: type[R], data: Any, *, path: str = "") -> R:
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or cls.kind_of_file}: {e['msg']}"
                                 for e in error.errors()[:3])
            raise RecordError(f"{path or cls.kind_of_file}: unreadable {cls.kind_of_file} ({problems})") from None


class Claim(Record):
    """Who took an attempt. Create-if-absent: the highest generation owns the job."""

    kind_of_file: ClassVar[str] = "claim"
    gen: int
    token: str  # unique per attempt: tells a writer whether its create won
    owner: str = ""
    host: str = ""
    pid: int | None = None
    at: float


class Heartbeat(Record):
    """What the owner of an attempt last said: when, what it is doing, when its work last moved."""

    kind_of_file: ClassVar[str] = "heartbeat"
    at: float
    token: str = ""
    released: bool = False
    phase: str | None = None
    phases: tuple[tuple[str, float], ...] = ()  # every phase of the attempt with the time it began
    progress_at: float | None = None


class Failure(Record):
    """Why an attempt gave up: the job is `failed` with this error."""

    kind_of_file: ClassVar[str] = "failure"
    error: str
    at: float
    summary: dict[str, Any] = {}


class Stamp(Record):
    """A dated request with nothing else to say: a cancel of an attempt, a queued start of one."""

    kind_of_file: ClassVar[str] = "request"
    at: float


class ChunkMarker(Record):
    """Chunk `index` is committed: its rows are the part named here (create-if-absent)."""

    kind_of_file: ClassVar[str] = "chunk marker"
    index: int
    part: PartInfo
    gen: int
    token: str = ""  # the committing attempt's: tells an attempt whether its commit won
    stats: dict[str, Any] = {}
    at: float | None = None  # when it was committed (markers of the first versions have no time)


class Manifest(Record):
    """The job is complete: its output is these parts, in order (create-if-absent: the commit point)."""

    kind_of_file: ClassVar[str] = "manifest"
    kind: Literal["stim", "rollout", "bake"]
    gen: int
    lines: int
    parts: list[PartInfo]
    summary: dict[str, Any] = {}
    completed_at: float | None = None


class StimPlan(Record):
    """One chunk per generator."""

    kind_of_file: ClassVar[str] = "stim plan"
    num_chunks: int
    total_expected: int


class RolloutPlan(Record):
    """Fixed-size chunks of stimuli, grouped into shards: chunk boundaries never move once planned."""

    kind_of_file: ClassVar[str] = "rollout plan"
    num_chunks: int
    total_expected: int
    stimuli: int
    stimuli_per_chunk: int
    chunks_per_shard: int

    def shards(self) -> list[range]:
        per, total = self.chunks_per_shard, self.num_chunks
        return [range(start, min(start + per, total)) for start in range(0, total, per)]


class BakePlan(Record):
    """A training run: its steps, the trajectories it trains on and the model it starts from."""

    kind_of_file: ClassVar[str] = "bake plan"
    total_steps: int
    trajectories: int
    parent_model: str
    # A bake commits checkpoints, not chunks or lines: what stim and rollout plans count is absent.
    num_chunks: ClassVar[int] = 0
    total_expected: ClassVar[None] = None


class CheckpointMarker(Record):
    """A bake's checkpoint at `step` is committed: its files (name -> bytes) are in `folder`, and the
    metrics rows logged since the previous checkpoint ride along (so each step's row exists once)."""

    kind_of_file: ClassVar[str] = "checkpoint marker"
    step: int
    folder: str  # relative to the bake's checkpoints folder
    files: dict[str, int]
    gen: int
    token: str = ""
    metrics: list[dict[str, Any]] = []


class LiveStep(Record):
    """A running bake attempt's latest step and loss (overwritten as it trains; read for progress)."""

    kind_of_file: ClassVar[str] = "live step"
    step: int
    total_steps: int
    loss: float


Plan = StimPlan | RolloutPlan | BakePlan
PLAN_BY_KIND: dict[str, type[Plan]] = {"stim": StimPlan, "rollout": RolloutPlan, "bake": BakePlan}


def gen_name(gen: int, width: int = 6) -> str:
    """The file name of record number `gen` (attempts and chunks: 6 digits; bake steps: 8)."""
    return f"{gen:0{width}d}.json"


def numbered(names: list[str], width: int = 6) -> list[int]:
    """The numbers of the records named `gen_name(n, width)` in a listing, in order; any other name
    (a temporary file, a hand-made copy) is not a record and is left out."""
    numbers = []
    for name in names:
        stem = name.removesuffix(".json")
        if name.endswith(".json") and stem.isdigit() and gen_name(int(stem), width) == name:
            numbers.append(int(stem))
    return sorted(numbers)


@dataclass(frozen=True)
class JobLayout:
    """Every path of one job's folder, relative to the storage root."""

    folder: str

    def path(self, *parts: str) -> str:
        return "/".join([self.folder, *parts])

    @property
    def plan(self) -> str:
        return self.path("plan.json")

    @property
    def manifest(self) -> str:
        return self.path("manifest.json")

    def claims_folder(self, scope: str = "", kind: str = "claims") -> str:
        """`claims`, `heartbeats` or `failures` of the whole job (scope "") or of one shard."""
        return self.path(*(("shards", scope) if scope else ()), kind)

    def claim(self, gen: int, scope: str = "") -> str:
        return f"{self.claims_folder(scope, 'claims')}/{gen_name(gen)}"

    def heartbeat(self, gen: int, scope: str = "") -> str:
        return f"{self.claims_folder(scope, 'heartbeats')}/{gen_name(gen)}"

    def failure(self, gen: int, scope: str = "") -> str:
        return f"{self.claims_folder(scope, 'failures')}/{gen_name(gen)}"

    def cancel(self, gen: int) -> str:
        return self.path("cancels", gen_name(gen))

    @property
    def starts(self) -> str:
        return self.path("starts")

    def start(self, gen: int) -> str:
        return self.path("starts", gen_name(gen))

    @property
    def chunks(self) -> str:
        return self.path("chunks")

    def chunk(self, index: int) -> str:
        return self.path("chunks", gen_name(index))

    def part(self, relative: str) -> str:
        """A part named relative to the job folder, as markers and the manifest name it."""
        return self.path(relative)

    @staticmethod
    def chunk_part_name(index: int, gen: int, unique: str) -> str:
        return f"parts/{index:06d}-g{gen:06d}-{unique}.parquet"

    @staticmethod
    def compacted_part_name(first_index: int, gen: int, unique: str) -> str:
        return f"parts/compact-{first_index:06d}-g{gen:06d}-{unique}.parquet"
