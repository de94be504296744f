"""A labeling output's predictions pushed into a Label Studio server, idempotent and resumable.

Each task is keyed by its image URI (`data.san_image_uri`, as `san export` writes it) and each SAN
prediction carries a `model_version` naming the weights and the taxonomy that made it
(`model_version_of`). A push first lists the tasks of the project's shards (only their ids, keys
and prediction versions), then for every row of the output:

- no task for the image: a new task with the prediction, imported in batches into the last shard
  with room (NAME, NAME-002, NAME-003, ... of at most `max_tasks_per_project` tasks each);
- a task whose SAN prediction has this model version: nothing (pushing twice creates nothing);
- a task with another SAN prediction (a newer run, say after fine-tuning): the old prediction is
  replaced. Where a task has SAN's predictions only (the usual case), a batch's are deleted in one
  request (the data manager's "delete predictions" action) and the new ones imported in another;
  a task that also holds other predictions gets the new one added and the old SAN ones deleted one
  by one, so that the others stay. Annotations are never touched.

Everything it does is visible on the server before the next step, so a push killed at any point is
finished by the next one: an import the server took shows up in the listing (no task twice), a
task whose old prediction was deleted before the new one came is a task without SAN's prediction
(it gets one), and one that holds two versions has the stale one deleted. Requests that fail in
passing (connections, timeouts, 5xx, 429) are retried with backoff (`pipeline.retries`); a refused
token or a bad request stops the push at once with one line saying what the server said. Two
pushes into one project at the same time are not guarded against: run one at a time.
"""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.taxonomy import Taxonomy

from ..exports.label_studio import labeling_config, to_label_studio
from ..retries import with_retries

log = logging.getLogger(__name__)

SAN_VERSION_PREFIX = "san "  # what tells SAN's predictions from a task's others
LIST_PAGE = 1000  # tasks per listing request


class LabelStudioError(Exception):
    """A push that cannot go on: the server refused it, or cannot be reached."""


def model_version_of(row: Mapping[str, Any], taxonomy: Taxonomy) -> str:
    """What a prediction says made it: the model, its weights' and its taxonomy's digests."""
    weights = (row.get("checkpoint_digest") or "random-weights")[:12]
    vocabulary = f"{taxonomy.name}@{row['taxonomy_digest'][:12]}"
    return f"{SAN_VERSION_PREFIX}{row['model_id']} weights:{weights} taxonomy:{vocabulary}"


class LabelStudioClient:
    """The few calls of Label Studio's REST API a push needs (legacy token authentication)."""

    def __init__(self, url: str, token: str, timeout_s: float = 120.0, attempts: int = 5) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s
        self.attempts = attempts

    def _once(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("Authorization", f"Token {self._token}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                text = response.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:500].decode(errors="replace")
            if e.code >= 500 or e.code in (408, 429):  # in passing: tried again
                raise ConnectionError(f"{method} {path}: HTTP {e.code}") from e
            if e.code in (401, 403):
                raise LabelStudioError(
                    f"Label Studio at {self.url} refused the token (HTTP {e.code}): check $LABEL_STUDIO_API_KEY"
                ) from e
            raise LabelStudioError(f"Label Studio at {self.url}: {method} {path}: HTTP {e.code}: {detail}") from e
        except urllib.error.URLError as e:  # refused, unresolvable, reset: in passing, maybe
            raise ConnectionError(f"{method} {path}: {e.reason}") from e
        return json.loads(text) if text else None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        try:
            return with_retries(lambda: self._once(method, path, body), f"Label Studio {method} {path}", self.attempts)
        except (ConnectionError, TimeoutError) as e:
            raise LabelStudioError(f"cannot reach Label Studio at {self.url}: {e}") from e

    def projects(self) -> list[dict[str, Any]]:
        found, page = [], 1
        while True:
            answer = self.request("GET", f"/api/projects?page={page}&page_size=100")
            found += answer["results"]
            if not answer.get("next"):
                return found
            page += 1

    def create_project(self, title: str, label_config: str) -> dict[str, Any]:
        return self.request("POST", "/api/projects", {"title": title, "label_config": label_config})

    def tasks(self, project: int) -> Iterator[dict[str, Any]]:
        """Each task's id, data and SAN-relevant prediction versions, a page at a time."""
        page = 1
        while True:
            fields = "fields=all&include=id,data,predictions_model_versions"
            answer = self.request("GET", f"/api/tasks?project={project}&page={page}&page_size={LIST_PAGE}&{fields}")
            yield from answer["tasks"]
            if page * LIST_PAGE >= answer["total"]:
                return
            page += 1

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> list[int]:
        answer = self.request("POST", f"/api/projects/{project}/import?return_task_ids=true", tasks)
        return list(answer.get("task_ids", []))

    def predictions(self, task: int) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/predictions?task={task}")

    def add_prediction(self, task: int, prediction: Mapping[str, Any]) -> None:
        self.request("POST", "/api/predictions", {"task": task, **prediction})

    def import_predictions(self, project: int, predictions: list[dict[str, Any]]) -> None:
        """Predictions of existing tasks (each names its `task`), in one request."""
        self.request("POST", f"/api/projects/{project}/import/predictions", predictions)

    def delete_all_predictions(self, project: int, tasks: list[int]) -> None:
        """Every prediction of these tasks, in one request (the data manager's action)."""
        body = {"selectedItems": {"all": False, "included": tasks}}
        self.request("POST", f"/api/dm/actions?id=delete_tasks_predictions&project={project}", body)

    def delete_prediction(self, prediction: int) -> None:
        self.request("DELETE", f"/api/predictions/{prediction}")


@dataclass
class Shard:
    """One project of the push: NAME is shard 1, NAME-002 shard 2, ..."""

    number: int
    id: int
    title: str
    tasks: int


@dataclass
class PushSummary:
    created: int = 0  # new tasks
    replaced: int = 0  # tasks whose SAN prediction was replaced by another model version's
    unchanged: int = 0  # tasks that had this prediction already
    tidied: int = 0  # stale SAN predictions of a replacement killed halfway, deleted
    projects: list[str] = field(default_factory=list)
    seconds: float = 0.0


def shard_title(project: str, number: int) -> str:
    return project if number == 1 else f"{project}-{number:03d}"


def _versions(task: Mapping[str, Any]) -> list[str]:
    versions = task.get("predictions_model_versions") or ""
    return [v.strip() for v in versions.split(",") if v.strip()] if isinstance(versions, str) else list(versions)


def push(
    client: LabelStudioClient,
    rows: Iterable[dict[str, Any]],
    taxonomy: Taxonomy,
    project: str,
    max_tasks_per_project: int = 100_000,
    batch_size: int = 250,
    image_root: str | None = None,
    polygons: bool = False,
    tolerance: float = 1.0,
    progress: Callable[[PushSummary, int], None] | None = None,
) -> PushSummary:
    """Push `rows` (a labeling output's, errors included: they are skipped) as predictions into
    the project's shards; see the module's docstring. `progress(summary, rows seen)` is called
    after every batch."""
    started = time.monotonic()
    summary = PushSummary()
    pattern = re.compile(rf"{re.escape(project)}(?:-(\d{{3}}))?")
    shards = []
    for found in client.projects():
        match = pattern.fullmatch(found["title"])
        if match:
            number = int(match.group(1) or 1)
            shards.append(Shard(number, found["id"], found["title"], 0))
    shards.sort(key=lambda s: s.number)
    config = labeling_config(taxonomy, polygons)
    if not shards:
        made = client.create_project(project, config)
        shards.append(Shard(1, made["id"], project, 0))
        log.info("made project %r (id %d) with the taxonomy's labeling config", project, made["id"])
    existing: dict[str, tuple[int, int, list[str]]] = {}  # image URI -> (project, task, prediction versions)
    for shard in shards:
        for task in client.tasks(shard.id):
            shard.tasks += 1
            key = (task.get("data") or {}).get("san_image_uri")
            if key is not None:
                existing[key] = (shard.id, task["id"], _versions(task))
    log.info("%d tasks already in %s", len(existing), ", ".join(s.title for s in shards))

    def room() -> Shard:
        shard = shards[-1]
        if shard.tasks < max_tasks_per_project:
            return shard
        number = shard.number + 1
        made = client.create_project(shard_title(project, number), config)
        log.info("made project %r (id %d): %r holds %d tasks", made["title"], made["id"], shard.title, shard.tasks)
        shards.append(Shard(number, made["id"], made["title"], 0))
        return shards[-1]

    def flush(new: list[dict[str, Any]]) -> None:
        while new:
            shard = room()
            part, new[:] = new[: max_tasks_per_project - shard.tasks], new[max_tasks_per_project - shard.tasks :]
            client.import_tasks(shard.id, part)
            shard.tasks += len(part)
            summary.created += len(part)

    seen = 0
    for batch in _batches((r for r in rows if r["error"] is None and r.get("video_uri") is None), batch_size):
        seen += len(batch)
        version = model_version_of(batch[0], taxonomy)  # one output, one provenance
        tasks, _ = to_label_studio(batch, taxonomy, image_root, polygons, tolerance, version)
        new = []
        wholesale: dict[int, list[tuple[int, dict[str, Any]]]] = {}  # project -> (task, prediction)
        for task in tasks:
            key = task["data"]["san_image_uri"]
            if key not in existing:
                new.append(task)
                existing[key] = (-1, -1, [version])  # a row twice in the output is pushed once
                continue
            project_id, task_id, versions = existing[key]
            existing[key] = (project_id, task_id, [version])
            stale = [v for v in versions if v.startswith(SAN_VERSION_PREFIX) and v != version]
            if version in versions and not stale:
                summary.unchanged += 1
            elif version not in versions and all(v.startswith(SAN_VERSION_PREFIX) for v in versions):
                wholesale.setdefault(project_id, []).append((task_id, task["predictions"][0]))
            else:  # other predictions beside SAN's, or a replacement killed halfway: one by one
                if version in versions:
                    summary.tidied += 1
                else:
                    client.add_prediction(task_id, task["predictions"][0])
                    summary.replaced += 1
                for old in client.predictions(task_id):
                    if old["model_version"].startswith(SAN_VERSION_PREFIX) and old["model_version"] != version:
                        client.delete_prediction(old["id"])
        for project_id, replacing in wholesale.items():
            client.delete_all_predictions(project_id, [task_id for task_id, _ in replacing])
            client.import_predictions(project_id, [{"task": task_id, **p} for task_id, p in replacing])
            summary.replaced += len(replacing)
        flush(new)
        if progress is not None:
            progress(summary, seen)
    summary.projects = [s.title for s in shards]
    summary.seconds = time.monotonic() - started
    return summary


def _batches(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
