"""Converter coverage on real architectures: every torchvision classification model and a list of
timm families, random-initialised, when those packages are installed (they are optional; the test
suite uses small look-alikes in ``tests/catalogue.py`` instead).

For each model: convert it (``paramgraph.from_module`` on a 1x3xSxS input), check the round trip
is bit-exact, then in float64 apply a random element of the recorded symmetry group and check the
function is kept (relative change of the output < 1e-10 on two random inputs) and the weights
moved. Graphs of more than ``--max-check-edges`` edges (1e8) get the round trip only: the float64
graph and the edge permutation of the check take ~70 bytes per edge. Prints a markdown table
(model, parameters, nodes, edges, seconds to convert, result) and a summary line per library;
``--json`` writes the rows.

    python scripts/coverage.py                         # all torchvision models up to --max-params
    python scripts/coverage.py --library timm --models resnet18 convnext_atto
    python scripts/coverage.py --library transformers --models vit_tiny deit   # timm ViTs too
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


def _convert_timed(module, x, row: dict):
    """``module``'s graph, its cold conversion time in ``row["seconds"]`` and its size in
    ``row``; None when the converter refuses it (``row["result"]`` says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            graph = pg.from_module(module, x)
            row["seconds"] = time.perf_counter() - start
    except pg.UnsupportedModuleError as err:
        row["result"] = f"refused: {err}"
        return None
    row["nodes"], row["edges"] = int(graph.num_nodes), int(graph.edge_index.size(1))
    return graph


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _size(build) -> int:
    """Parameters of the model ``build()`` makes: built on the meta device (no memory, no init)
    where its constructor allows, else for real (RegNet computes its widths with tensor ops that
    the meta device cannot run)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                return _params(build())
        except Exception:
            return _params(build())


def check(name: str, build, size: int, seed: int = 0, max_check_edges: float = 1e8) -> dict:
    """Convert one model and check it; returns a row. Graphs with more than
    ``max_check_edges`` edges get the round trip but not the float64 symmetry check, whose
    float64 graph and edge permutation take ~70 bytes per edge."""
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
    graph = _convert_timed(module, x, row)
    if graph is None:
        return row
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
    if row["edges"] > max_check_edges:
        row["result"] = (f"round trip exact; symmetry not checked (> {max_check_edges:.3g} "
                         "edges: memory)")
        return row
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
    parser.add_argument("--library", choices=("torchvision", "timm", "transformers"),
                        default="torchvision", help="transformers: Hugging Face tiny configs "
                        "and timm ViT/DeiT (see transformer_coverage)")
    parser.add_argument("--models", nargs="*", help="model names (default: all / the families)")
    parser.add_argument("--size", type=int, default=64, help="input height and width (64)")
    parser.add_argument("--max-params", type=float, default=150e6,
                        help="skip larger models (default 150M: time and memory on 2 cores)")
    parser.add_argument("--max-check-edges", type=float, default=1e8,
                        help="skip the float64 symmetry check of larger graphs (default 1e8 "
                        "edges: ~7 GB)")
    parser.add_argument("--json", type=Path, help="write the rows to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.library == "transformers":
        return transformer_coverage(args.models, args.json)
    try:
        builders = _builders(args.library, args.models)
    except ImportError as err:
        print(f"coverage: {args.library} is not installed ({err})", file=sys.stderr)
        return 2
    rows = []
    print("| model | params | nodes | edges | seconds | result |")
    print("|---|---|---|---|---|---|")
    for name, build in builders:
        size = 0 if name.startswith(TRANSFORMER_PREFIXES) else _size(build)
        if size > args.max_params:
            row = {"model": name, "params": size, "result": f"skipped (> {args.max_params:.3g} "
                   "parameters)"}
        else:
            try:
                row = check(name, build, args.size, max_check_edges=args.max_check_edges)
            except Exception as err:  # a bug in the converter, not a refusal: show it
                row = {"model": name, "result": f"error: {type(err).__name__}: {err}"}
        rows.append(row)
        print(_fmt(row), flush=True)
        gc.collect()
    counted = [r for r in rows if not r["result"].startswith(("transformer", "skipped"))]
    ok = sum(r["result"].startswith("ok") for r in counted)
    exact = ok + sum(r["result"].startswith("round trip exact") for r in counted)
    print(f"\n{args.library}: {exact}/{len(counted)} convert with a bit-exact round trip "
          f"({100 * exact / max(len(counted), 1):.0f}%), {ok} of them checked with a "
          f"function-preserving symmetry ({100 * ok / max(len(counted), 1):.0f}%); "
          f"{sum(r['result'].startswith('skipped') for r in rows)} skipped by size, "
          f"{sum(r['result'].startswith('transformer') for r in rows)} transformers not counted")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


# -- transformers (issue 14) -----------------------------------------------------------------------
# Hugging Face tiny random configs and timm ViT/DeiT, each converted from token ids or images.
# Separate from the CNN coverage above: other inputs, other outputs (a ModelOutput), other models.

def _hf_models() -> dict:
    """name -> (builder, example input); tiny configs of the families people use."""
    import transformers as T

    ids = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(0))
    image = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    small = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    decoder = dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=8, max_position_embeddings=32, use_cache=False)
    return {
        "hf BertModel": (lambda: T.BertModel(T.BertConfig(
            vocab_size=100, max_position_embeddings=16, **small), add_pooling_layer=False), ids),
        "hf GPT2Model (gelu_new)": (lambda: T.GPT2Model(T.GPT2Config(
            vocab_size=100, n_positions=16, n_embd=16, n_layer=2, n_head=2, use_cache=False)),
            ids),
        "hf ViTModel": (lambda: T.ViTModel(T.ViTConfig(image_size=16, patch_size=8, **small),
                                           add_pooling_layer=False), image),
        "hf LlamaModel (GQA 8q/4kv)": (lambda: T.LlamaModel(T.LlamaConfig(
            num_key_value_heads=4, **decoder)), ids),
        "hf MistralModel (GQA 8q/2kv)": (lambda: T.MistralModel(T.MistralConfig(
            num_key_value_heads=2, **decoder)), ids),
        "hf LlamaModel (MQA 8q/1kv)": (lambda: T.LlamaModel(T.LlamaConfig(
            num_key_value_heads=1, **decoder)), ids),
        "hf GPT2LMHeadModel (tied head)": (lambda: T.GPT2LMHeadModel(T.GPT2Config(
            vocab_size=100, n_positions=16, n_embd=16, n_layer=2, n_head=2, use_cache=False)),
            ids),
        "hf LlamaForCausalLM (tied head, GQA)": (lambda: T.LlamaForCausalLM(T.LlamaConfig(
            num_key_value_heads=4, tie_word_embeddings=True, **decoder)), ids),
    }


# timm's small ViT-like models and the input size their learned positions are made for: plain
# ViT/DeiT, DeiT's distillation token, register tokens with average pooling (wee, little), a
# parallel-block ViT (pwee), EVA-02 (rotary embeddings on the patch tokens only, SwiGLU).
TIMM_TRANSFORMERS = {
    "vit_tiny_patch16_224": 224, "deit_tiny_patch16_224": 224,
    "deit_tiny_distilled_patch16_224": 224, "vit_wee_patch16_reg1_gap_256": 256,
    "vit_pwee_patch16_reg1_gap_256": 256, "vit_little_patch16_reg4_gap_256": 256,
    "vit_small_patch32_224": 224, "eva02_tiny_patch14_224": 224,
}


def _timm_transformers() -> dict:
    import_torchvision()  # timm imports torchvision when it is installed
    import timm

    gen = torch.Generator().manual_seed(0)
    return {f"timm {n}": (lambda n=n: timm.create_model(n),
                          torch.randn(1, 3, s, s, generator=gen))
            for n, s in TIMM_TRANSFORMERS.items()}


def _first_tensor(y):
    """The model's main output: a ModelOutput's first field (last_hidden_state or logits)."""
    if hasattr(y, "to_tuple"):
        return y.to_tuple()[0]
    return y[0] if isinstance(y, (tuple, list)) else y


def check_transformer(name: str, build, x: torch.Tensor, seed: int = 0) -> dict:
    """As :func:`check`, with the given example input (token ids or images): convert, round
    trip bit-exact, then in float64 a random group element keeps the first output
    (``last_hidden_state``, or the logits of a language-model head; relative change
    < 1e-10; models that compute norms in float32 whatever their dtype, as LLaMA's RMSNorm
    does, keep it to float32 rounding only, reported as such)."""
    torch.manual_seed(seed)
    row = {"model": name}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = build().eval()
    row["params"] = _params(module)
    graph = _convert_timed(module, x, row)
    if graph is None:
        return row
    state, ref = pg.to_state_dict(graph), module.state_dict()
    if list(state) != list(ref) or any(not torch.equal(state[k], ref[k]) for k in ref):
        row["result"] = "round trip differs"
        return row
    m64 = module.double()
    x64 = x.double() if x.is_floating_point() else x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        moved = pg.random_symmetry(pg.from_module(m64, x64),
                                   generator=torch.Generator().manual_seed(seed))
        other = pg.load_into(copy.deepcopy(m64), moved)
        with torch.no_grad():
            y, y2 = _first_tensor(m64(x64)), _first_tensor(other(x64))
    err = float((y2 - y).norm() / y.norm())
    changed = any(not torch.equal(a, b) for a, b in zip(m64.state_dict().values(),
                                                        other.state_dict().values()))
    row["symmetry_error"] = err
    row["result"] = "ok" if err < 1e-10 and changed else \
        f"ok to float32 rounding ({err:.1e}: the model computes in float32)" \
        if err < 1e-6 and changed else \
        f"symmetry {'breaks the function' if err >= 1e-6 else 'moves nothing'} ({err:.1e})"
    return row


def transformer_coverage(names: list[str] | None, json_path: Path | None) -> int:
    """Run :func:`check_transformer` on the Hugging Face and timm models that are installed."""
    models: dict = {}
    for source in (_hf_models, _timm_transformers):
        try:
            models.update(source())
        except ImportError as err:
            print(f"coverage: skipped {source.__name__} ({err})", file=sys.stderr)
    rows = []
    print("| model | params | nodes | edges | seconds | result |")
    print("|---|---|---|---|---|---|")
    for name, (build, x) in models.items():
        if names and not any(n in name for n in names):
            continue
        try:
            row = check_transformer(name, build, x)
        except Exception as err:  # a bug in the converter, not a refusal: show it
            row = {"model": name, "result": f"error: {type(err).__name__}: {err}"}
        rows.append(row)
        print(_fmt(row), flush=True)
        gc.collect()
    ok = sum(r["result"].startswith("ok") for r in rows)
    print(f"\ntransformers: {ok}/{len(rows)} convert with a bit-exact round trip and a "
          "function-preserving symmetry")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
