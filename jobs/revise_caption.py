"""Human-in-the-loop caption revision (Dong et al.): suppress / boost labelled neurons and decode again.

    interp-ray revise-caption --checkpoint outputs/semantic --clip test:3 --suppress blue --boost red
    interp-ray revise-caption --checkpoint outputs/semantic --features video7.npy --suppress 12,40 --boost 7

``--clip SPLIT:INDEX`` regenerates a scene clip and runs the frame CNN the captioner was trained with (recorded in
its checkpoint); ``--features`` reads one video's K × D frame features (``<video_id>.npy`` of the video-feature
layout). ``--suppress``/``--boost`` take neuron ids or label words (comma-separated, repeatable); a word selects
every confidently labelled neuron with that label. Suppressed neurons are set to 0, boosted ones to
``--boost-scale`` × their typical top activation. Prints the caption before and after (``--json``: one JSON line).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from interp_ray.errors import UserError
from jobs.common import exit_with


def _split_list(values: Sequence[str]) -> list[str]:
    return [x.strip() for v in values for x in v.split(",") if x.strip()]


def clip_features(info: dict, spec: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(1 × K × D features, 1 × K mask, ground truth) of scene clip ``SPLIT:INDEX`` through the recorded frame CNN."""
    from interp_ray.activations import clip_items
    from interp_ray.data.scenes import ATTRIBUTE_KINDS, ATTRIBUTE_VALUES, load_scene_videos

    data = info.get("data") or {}
    if data.get("source") != "scenes":
        raise UserError("--clip needs a captioner trained on scene clips; use --features for other data")
    split, _, index = spec.partition(":")
    if split not in ("train", "val", "test") or not index.isdigit():
        raise UserError(f"--clip must look like test:12 (split:index), got {spec!r}")
    clips = load_scene_videos(split, n=int(index) + 1, frames=data["frames"], seed=data["seed"], size=data["size"],
                              sentences_per_image=data["sentences_per_clip"])
    one = clip_items(data["checkpoint"], clips, data["layer"], rows=[int(index)])
    truth = {k: ATTRIBUTE_VALUES[k][int(v)] for k, v in zip(ATTRIBUTE_KINDS, one.attributes[0])}
    return one.features, one.mask, {"id": str(one.ids[0]), "attributes": truth, "reference": one.sentences[0][0]}


def file_features(path: str, frames: int) -> tuple[np.ndarray, np.ndarray, dict]:
    from interp_ray.data.video_features import _load_features, pad_frames

    f, m = pad_frames(_load_features(Path(path)), frames)
    return f[None], m[None], {"id": Path(path).stem}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a semantic explainer checkpoint (jobs.train_explainer)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--clip", help="scene clip SPLIT:INDEX, e.g. test:3")
    src.add_argument("--features", help="one video's K × D frame features (.npy)")
    p.add_argument("--suppress", action="append", default=[], help="neuron ids or label words (comma-separated)")
    p.add_argument("--boost", action="append", default=[], help="neuron ids or label words (comma-separated)")
    p.add_argument("--boost-scale", type=float, default=1.0)
    p.add_argument("--match", choices=["label", "words"], default="label",
                   help="a word selects the neurons confidently labelled with it, or those with it among their "
                        "top-m words")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args(argv)

    from interp_ray.explainers.semantic.explainer import SemanticExplainer

    explainer = SemanticExplainer.load(args.checkpoint)
    suppress, boost = _split_list(args.suppress), _split_list(args.boost)
    if not suppress and not boost:
        raise UserError("nothing to revise: give --suppress and/or --boost (neuron ids or label words)")
    frames = int((explainer.info.get("data") or {}).get("frames", 8))
    feats, mask, meta = clip_features(explainer.info, args.clip) if args.clip else \
        file_features(args.features, frames)
    edit = explainer.make_edit(suppress, boost, boost_scale=args.boost_scale, match=args.match)
    if not edit:
        raise UserError(f"no neuron matches {', '.join(suppress + boost)} (labels: "
                        f"{', '.join(sorted({n.label for n in explainer.neurons if n.confident}))})")
    before = explainer.caption(feats, mask)[0]
    after = explainer.caption(feats, mask, edit=edit)[0]
    out = {**meta, "before": before, "after": after, "suppressed": edit.suppress,
           "boosted": {str(k): round(v, 4) for k, v in edit.boost.items()}}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"video:  {meta['id']}")
        if "attributes" in meta:
            print(f"truth:  {', '.join(meta['attributes'].values())}")
        print(f"edit:   suppress {edit.suppress or '-'}; boost {sorted(edit.boost) or '-'}")
        print(f"before: {before}")
        print(f"after:  {after}")
    return 0


if __name__ == "__main__":
    exit_with(main)
