"""Push a labeling output's predictions into an annotation tool's server.

    export LABEL_STUDIO_URL=http://label-studio:8080 LABEL_STUDIO_API_KEY=...
    san push label-studio --input s3://bucket/labels/ --vocab taxonomy.yaml --project street-scenes \\
        [--least-confident 500 | --where "uncertain_fraction > 0.2"] [--max-tasks-per-project 100000]

Idempotent and resumable: pushing the same output twice creates nothing new, a newer run (another
model version) replaces the predictions it changed, and a killed push is finished by the next one
(see pipeline.push.label_studio).

Exit codes: 0 pushed; 1 the output cannot be read, or the server refused or cannot be reached;
2 invalid flags or taxonomy, or labels made with another taxonomy.
"""

from __future__ import annotations

import argparse
import heapq
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

from pipeline.ray_session import configure_logging, log_summary  # noqa: E402
from pipeline.store import LabelStore, ProvenanceError  # noqa: E402
from schemas.cli import add_config_flags, add_logging_flags, config_and_taxonomy, log_level  # noqa: E402
from schemas.jobs import PushLabelStudioConfig  # noqa: E402

log = logging.getLogger("jobs.push")
DESCRIPTION = "Push a labeling output's predictions into an annotation tool's server: Label Studio."
PROGRESS_EVERY_S = 10.0
# what --least-confident ranks the rows by, read before the rows themselves
_RANKED = ["image_uri", "error", "uncertain_fraction", "mean_margin"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tools = parser.add_subparsers(dest="tool", required=True, metavar="{label-studio}")
    studio = tools.add_parser("label-studio", help=DESCRIPTION, description=__doc__.split("\n\n")[0])
    add_config_flags(studio, PushLabelStudioConfig)
    add_logging_flags(studio)


def _rows(store: LabelStore, config: PushLabelStudioConfig) -> Iterator[dict[str, Any]]:
    """The rows to push: all, the least confident N, or those --where holds for."""
    import duckdb

    from pipeline.report.collect import review_key

    keep = None
    if config.least_confident is not None:
        ranked = ((review_key(r), r["image_uri"]) for r in store.rows(_RANKED) if r["error"] is None)
        keep = {uri for _, uri in heapq.nlargest(config.least_confident, ranked)}
    for _, rows_of_file in store.tables():
        if config.where is not None:  # the user's own SQL over their own rows
            rows_of_file = duckdb.sql(f"SELECT * FROM rows_of_file WHERE {config.where}").arrow().read_all()
        for row in rows_of_file.to_pylist():
            if keep is None or row["image_uri"] in keep:
                yield row


def run(args: argparse.Namespace) -> int:
    from pipeline.push.label_studio import LabelStudioClient, LabelStudioError, PushSummary, push

    configure_logging(log_level(args))
    checked = config_and_taxonomy(args, PushLabelStudioConfig)
    if checked is None:
        return 2
    config, taxonomy = checked
    url = config.url or os.environ.get("LABEL_STUDIO_URL")
    token = os.environ.get("LABEL_STUDIO_API_KEY")
    if not url or not token:
        missing = " and ".join(
            n for n, v in (("--url or $LABEL_STUDIO_URL", url), ("$LABEL_STUDIO_API_KEY", token)) if not v
        )
        print(f"invalid arguments:\n  Label Studio needs {missing}", file=sys.stderr)
        return 2
    store = LabelStore(config.input, config.storage_options)
    try:
        store.check_taxonomy(taxonomy)
    except ProvenanceError as e:
        log.error("%s", e)
        return 2
    last = time.monotonic()

    def progress(summary: PushSummary, rows: int) -> None:
        nonlocal last
        if time.monotonic() - last >= PROGRESS_EVERY_S:
            last = time.monotonic()
            log.info("pushing: %s rows, %s new tasks, %s replaced, %s unchanged", f"{rows:,}",
                     f"{summary.created:,}", f"{summary.replaced:,}", f"{summary.unchanged:,}")  # fmt: skip

    client = LabelStudioClient(url, token)
    try:
        summary = push(
            client, _rows(store, config), taxonomy, config.project, config.max_tasks_per_project,
            config.batch_size, config.image_root, config.polygons, config.polygon_tolerance, progress,
        )  # fmt: skip
    except LabelStudioError as e:
        log.error("%s (a push stopped halfway is finished by running it again)", e)
        return 1
    except (OSError, ValueError) as e:
        log.error("%s: %s", type(e).__name__, e)
        return 1
    pushed = summary.created + summary.replaced
    rate = pushed / summary.seconds if summary.seconds > 0 else 0.0
    log_summary(
        log,
        f"push to {url}: {summary.created:,} new tasks, {summary.replaced:,} predictions replaced, "
        f"{summary.unchanged:,} unchanged in {summary.seconds:.1f}s ({rate:.0f} tasks/s); "
        f"projects: {', '.join(summary.projects)}",
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="san push", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
