"""Converter coverage on real architectures: every torchvision classification model and a list of
timm families, random-initialised, when those packages are installed (they are optional; the test
suite uses small look-alikes in ``tests/catalogue.py`` instead).

For each model: convert it (``paramgraph.from_module`` on a 1x3xSxS input), check the round trip
is bit-exact, then in float64 apply a random element of the recorded symmetry group and check the
function is kept (relative change of the output < 1e-10 on two random inputs) and the weights
moved. Prints a markdown table (model, parameters, nodes, edges, seconds to convert, result) and a
summary line per library; ``--json`` writes the rows.

    python scripts/coverage.py                         # all torchvision models up to --max-params
    python scripts/coverage.py --library timm --models resnet18 convnext_atto
    PYTHONPATH=/path/to/extra/site-packages python scripts/coverage.py ...

Transformers (ViT, Swin, MaxViT) are listed but not counted: they belong to the transformer
issue. On machines where the torchvision wheel was built for another torch (CUDA torch wheel next
to a CPU torch), its C operators fail to register; the model definitions do not need them, so the
import tolerates that (``import_torchvision``).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import time
import warnings
from pathlib import Path

import torch

import paramgraph as pg

TRANSFORMER_PREFIXES = ("vit_", "swin_", "maxvit", "deit", "beit", "cait", "eva", "levit",
                        "mvit", "xcit", "pit_", "tnt_", "twins", "coat", "crossvit", "convit")

TIMM_FAMILIES = [
    "resnet18", "resnet50d", "resnext26ts", "seresnext26d_32x4d", "ecaresnet26t", "skresnet18",
    "res2net50_26w_4s", "resnest14d", "cspresnet50", "dla34", "dpn68", "densenet121",
    "vgg11_bn", "repvgg_a0", "regnetx_002", "regnety_002", "efficientnet_b0",
    "tf_efficientnet_b0", "efficientnet_lite0", "efficientnetv2_rw_t", "mobilenetv2_100",
    "mobilenetv3_small_100", "mobilenetv3_large_100", "mnasnet_100", "fbnetc_100", "mixnet_s",
    "tinynet_a", "ghostnet_100", "lcnet_050", "rexnet_100", "convnext_atto", "convnext_nano",
    "nf_resnet26", "hrnet_w18_small", "inception_v3", "xception41",
]

# input sizes for models that need more than the default
MIN_SIZE = {"inception_v3": 96, "googlenet": 64, "alexnet": 64}


def import_torchvision():
    """Import torchvision even where its C operators cannot register with this torch (a wheel
    built for another torch): registering their meta kernels then fails, and is skipped."""
    real = torch.library.register_fake

    def tolerant(op, fn=None, **kwargs):
        def register(f):
            try:
                real(op, **kwargs)(f)
            except RuntimeError:  # "operator torchvision::nms does not exist"
                pass
            return f
        return register(fn) if fn is not None else register

    torch.library.register_fake = tolerant
    try:
        import torchvision
    finally:
        torch.library.register_fake = real
    return torchvision


def _builders(library: str, names: list[str] | None):
    if library == "torchvision":
        tv = import_torchvision()
        all_names = tv.models.list_models(module=tv.models)
        return [(n, lambda n=n: tv.models.get_model(n, weights=None)) for n in names or all_names]
    import_torchvision()  # timm imports torchvision when it is installed
    import timm

    return [(n, lambda n=n: timm.create_model(n, pretrained=False)) for n in names or TIMM_FAMILIES]


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def check(name: str, build, size: int, seed: int = 0) -> dict:
    """Convert one model and check it; returns a row."""
    torch.manual_seed(seed)
    row = {"model": name}
    if name.startswith(TRANSFORMER_PREFIXES):
        row.update(result="transformer (not counted)")
        return row
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = build().eval()
    row["params"] = _params(module)
    size = max(size, MIN_SIZE.get(name, 0))
    x = torch.randn(1, 3, size, size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            graph = pg.from_module(module, x)
            row["seconds"] = time.perf_counter() - start
    except pg.UnsupportedModuleError as err:
        row["result"] = f"refused: {err}"
        return row
    row["nodes"], row["edges"] = int(graph.num_nodes), int(graph.edge_index.size(1))
    state = pg.to_state_dict(graph)
    ref = {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in ref if k not in state]
    unused = set(graph.segments.unplaced)  # not used by the eval forward (auxiliary heads)
    if set(missing) != unused or any(not torch.equal(state[k], ref[k]) for k in state):
        row["result"] = f"round trip differs ({len(set(missing) - unused)} tensors lost)"
        return row
    row["unused"] = len(unused)
    del graph, state
    gc.collect()
    # the symmetry check, in float64 (batch-norm statistics randomised so folding mistakes show)
    m64 = module.double()
    with torch.no_grad():
        for key, buf in m64.named_buffers():
            if key.endswith("running_mean"):
                buf.normal_(0, 0.3)
            elif key.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g64 = pg.from_module(m64, x.double())
    moved = pg.random_symmetry(g64, generator=torch.Generator().manual_seed(seed))
    del g64
    other = pg.load_into(copy.deepcopy(m64), moved)
    inputs = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        y, y2 = m64(inputs), other(inputs)
    if isinstance(y, (tuple, list)):
        y, y2 = y[0], y2[0]
    err = float((y2 - y).norm() / y.norm())
    changed = any(not torch.equal(a, b) for a, b in zip(m64.state_dict().values(),
                                                        other.state_dict().values()))
    row["symmetry_error"] = err
    row["result"] = "ok" if err < 1e-10 and changed else \
        f"symmetry {'breaks the function' if err >= 1e-10 else 'moves nothing'} ({err:.1e})"
    if row["result"] == "ok" and row["unused"]:
        row["result"] = f"ok ({row['unused']} tensors of auxiliary heads unused in eval)"
    return row


def _fmt(row: dict) -> str:
    def num(key, fmt):
        return format(row[key], fmt) if key in row else ""
    params = f"{row['params'] / 1e6:.1f}M" if "params" in row else ""
    result = row["result"].replace("|", "/")
    if len(result) > 160:
        result = result[:160] + "..."
    return (f"| {row['model']} | {params} | {num('nodes', ',')} | {num('edges', ',')} | "
            f"{num('seconds', '.2f')} | {result} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", choices=("torchvision", "timm"), default="torchvision")
    parser.add_argument("--models", nargs="*", help="model names (default: all / the families)")
    parser.add_argument("--size", type=int, default=64, help="input height and width (64)")
    parser.add_argument("--max-params", type=float, default=150e6,
                        help="skip larger models (default 150M: time and memory on 2 cores)")
    parser.add_argument("--json", type=Path, help="write the rows to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        builders = _builders(args.library, args.models)
    except ImportError as err:
        print(f"coverage: {args.library} is not installed ({err})", file=sys.stderr)
        return 2
    rows = []
    print("| model | params | nodes | edges | seconds | result |")
    print("|---|---|---|---|---|---|")
    for name, build in builders:
        try:
            with warnings.catch_warnings(), torch.device("meta"):
                warnings.simplefilter("ignore")
                size = _params(build())
        except Exception:
            size = 0
        if size > args.max_params:
            row = {"model": name, "params": size, "result": f"skipped (> {args.max_params:.0e} "
                   "parameters)"}
        else:
            try:
                row = check(name, build, args.size)
            except Exception as err:  # a bug in the converter, not a refusal: show it
                row = {"model": name, "result": f"error: {type(err).__name__}: {err}"}
        rows.append(row)
        print(_fmt(row), flush=True)
        gc.collect()
    counted = [r for r in rows if not r["result"].startswith(("transformer", "skipped"))]
    ok = sum(r["result"].startswith("ok") for r in counted)
    print(f"\n{args.library}: {ok}/{len(counted)} convert with a bit-exact round trip and a "
          f"function-preserving symmetry ({100 * ok / max(len(counted), 1):.0f}%); "
          f"{sum(r['result'].startswith('skipped') for r in rows)} skipped by size, "
          f"{sum(r['result'].startswith('transformer') for r in rows)} transformers not counted")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
