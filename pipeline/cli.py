"""Argument helpers shared by the entry scripts that read cached codes."""
from __future__ import annotations

from pathlib import Path

from .backbones import DEFAULT_BACKBONE, POOLINGS
from .errors import UserError


def add_code_options(p, many: bool = False) -> None:
    """Options that name a cached code set (or, with ``many``, several: their product)."""
    n = "+" if many else None
    p.add_argument("--codes", nargs="+" if many else None, default=None,
                   help="path of cached code file(s) (.h5); overrides the options below")
    p.add_argument("--data", default="examples/caltech5", help="image folder the codes were made from")
    p.add_argument("--backbone", nargs=n, default=[DEFAULT_BACKBONE] if many else DEFAULT_BACKBONE,
                   help="backbone the codes were made with")
    p.add_argument("--layer", nargs=n, default=[None] if many else None,
                   help="layer the codes were taken from (default: the final conv block)")
    p.add_argument("--pooling", nargs=n, default=["avg"] if many else "avg", choices=POOLINGS, help="pooling of the codes")
    p.add_argument("--weights", default="imagenet", help="weights the codes were made with")
    p.add_argument("--image-size", type=int, default=None, help="input size the codes were made with")
    p.add_argument("--cache-dir", default="cache", help="where code files are")


def code_paths(a) -> list[Path]:
    """The code files named by :func:`add_code_options`; a clear error for any not yet made."""
    from .codes import code_spec, codes_command

    if a.codes:
        return [Path(c) for c in ([a.codes] if isinstance(a.codes, str) else a.codes)]
    listify = lambda v: v if isinstance(v, list) else [v]
    paths = []
    for bb in listify(a.backbone):
        for layer in listify(a.layer):
            for pooling in listify(a.pooling):
                spec = code_spec(a.data, bb, layer, pooling, a.weights, a.image_size)
                path = spec.path(a.cache_dir)
                if not path.exists():
                    raise UserError(f"no cached codes for {bb} {spec.layer}/{pooling} at {path}; "
                                    f"make them with: {codes_command(spec, a.data)}")
                paths.append(path)
    return paths
