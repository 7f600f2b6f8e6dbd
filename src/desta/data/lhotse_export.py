"""Export the manifest to a lhotse CutSet (one MonoCut per clip, its metadata on the supervision), so lhotse's
samplers and feature pipelines can read what `desta prepare` wrote. Run:
    python -m desta.data.lhotse_export data/manifests data/manifests/cuts_train.jsonl.gz --split train
Streams shard by shard (memory flat); s3:// audio becomes a lhotse "url" source.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from desta.data.manifest import Clip, iter_clips


def _custom(clip: Clip) -> dict[str, Any]:
    skip = {"id", "audio", "duration", "sample_rate", "channels", "transcript", "language", "speaker", "gender",
            "segments"}
    return {k: v for k, v in clip.__dict__.items() if k not in skip and v not in (None, [], {})}


def clip_to_cut(clip: Clip, root: str | Path = "."):
    """One manifest row -> lhotse MonoCut (recording + whole-clip supervision + timestamped segments if any)."""
    from lhotse import MonoCut, Recording, SupervisionSegment
    from lhotse.audio import AudioSource

    remote = clip.audio.startswith(("s3://", "http://", "https://"))
    location = clip.audio if remote or Path(clip.audio).is_absolute() else str(Path(root) / clip.audio)
    recording = Recording(id=clip.id, sources=[AudioSource(type="url" if remote else "file",
                                                           channels=list(range(clip.channels)), source=location)],
                          sampling_rate=clip.sample_rate, num_samples=round(clip.duration * clip.sample_rate),
                          duration=clip.duration)
    sups = [SupervisionSegment(id=clip.id, recording_id=clip.id, start=0.0, duration=clip.duration, channel=0,
                               text=clip.transcript, language=clip.language, speaker=clip.speaker,
                               gender=clip.gender, custom=_custom(clip))]
    for i, seg in enumerate(clip.segments or []):
        sups.append(SupervisionSegment(id=f"{clip.id}#{i}", recording_id=clip.id, start=seg["start"],
                                       duration=seg["end"] - seg["start"], channel=0, text=seg.get("text"),
                                       speaker=seg.get("speaker"), gender=seg.get("gender"),
                                       custom={"emotion": seg.get("emotion")}))
    return MonoCut(id=clip.id, start=0.0, duration=clip.duration, channel=0, recording=recording, supervisions=sups)


def iter_cuts(manifest_dir: str | Path, splits: list[str] | None = None, root: str | Path = ".") -> Iterator[Any]:
    for clip in iter_clips(manifest_dir, splits):
        yield clip_to_cut(clip, root)


def export_cutset(manifest_dir: str | Path, out_path: str | Path, splits: list[str] | None = None,
                  root: str | Path = ".") -> int:
    """Write a (gzipped) JSONL CutSet; returns the number of cuts. Open it with `CutSet.from_jsonl_lazy(out_path)`."""
    from lhotse import CutSet

    n = 0
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with CutSet.open_writer(out_path) as writer:
        for cut in iter_cuts(manifest_dir, splits, root):
            writer.write(cut)
            n += 1
    return n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest_dir")
    ap.add_argument("out_path", help="e.g. data/manifests/cuts.jsonl.gz")
    ap.add_argument("--split", action="append", choices=["train", "valid", "test"])
    ap.add_argument("--root", default=".", help="project root that relative audio paths start from")
    args = ap.parse_args(argv)
    print(f"wrote {export_cutset(args.manifest_dir, args.out_path, args.split, args.root)} cuts to {args.out_path}")


if __name__ == "__main__":
    main()
