"""How exports name what they write: paths relative to the sources' common folder, a video's
folder name, a frame's file name."""

from __future__ import annotations

import posixpath
import re


def common_folder(uris: list[str]) -> str:
    """The deepest folder (or prefix) holding every URI, ending in '/'."""
    if not uris:
        return ""
    folders = [u.rsplit("/", 1)[0] + "/" if "/" in u else "" for u in uris]
    common = posixpath.commonprefix(folders)
    return common[: common.rfind("/") + 1]


def relative_file_names(uris: list[str], image_root: str | None) -> tuple[list[str], str]:
    """Each URI relative to `image_root` (default: their common folder), as annotation tools resolve
    `file_name` against the image folder they are given; and the root used."""
    root = common_folder(uris) if image_root is None else image_root.rstrip("/") + "/"
    outside = [u for u in uris if not u.startswith(root)]
    if outside:
        raise ValueError(f"{len(outside)} images are not under --image-root {root} (first: {outside[0]})")
    return [u[len(root) :] for u in uris], root


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def video_names(video_uris: list[str]) -> dict[str, str]:
    """Each video's folder name: its path under the videos' common folder, made one safe name."""
    root = common_folder(video_uris)
    names = {}
    for uri in video_uris:
        relative = uri[len(root) :].rsplit(".", 1)[0]
        names[uri] = _UNSAFE.sub("_", relative.replace("/", "__")).lstrip(".") or "video"
    return names


def frame_name(frame_index: int) -> str:
    return f"{frame_index:08d}"
