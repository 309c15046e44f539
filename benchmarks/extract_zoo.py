"""Extract every distinct 2-D convolution of torchvision's classification models into the table
`convc bench --zoo` times (convc/bench/zoo.json). Run once; the bench itself needs only PyTorch.

    pip install torch==2.13.0 && pip install --no-deps torchvision==0.28.0
    python benchmarks/extract_zoo.py            # writes convc/bench/zoo.json

Each model is built with `weights=None` (nothing is downloaded) in eval mode and run once on a
batch-1 input of its own size (224x224, Inception v3 299x299); a forward hook on every nn.Conv2d
records its arguments and the shape of the input it received. Layers that are the same convolution
(input shape, output channels, kernel, stride, padding, dilation, groups, bias) are counted, per
model, as often as they run.

torchvision 0.28.0 pairs with torch 2.13.0, but the registry's torchvision wheel is a CUDA build
whose C++ ops fail to load beside the CPU torch: `import torchvision` then dies registering fake
kernels for them (torchvision/_meta_registrations.py: "operator torchvision::nms does not exist").
The pure-Python model definitions need none of those ops, so that one module is pre-empted here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import types
from pathlib import Path

# name -> input size (batch 1, 3 channels)
MODELS = {
    "resnet18": 224, "resnet50": 224, "resnext50_32x4d": 224, "wide_resnet50_2": 224,
    "mobilenet_v2": 224, "mobilenet_v3_large": 224, "efficientnet_b0": 224,
    "regnet_y_400mf": 224, "shufflenet_v2_x1_0": 224, "squeezenet1_1": 224, "densenet121": 224,
    "googlenet": 224, "inception_v3": 299, "mnasnet1_0": 224, "convnext_tiny": 224, "vgg16": 224,
}
OUT = Path(__file__).resolve().parents[1] / "convc" / "bench" / "zoo.json"


def import_torchvision():
    sys.modules.setdefault("torchvision._meta_registrations",
                           types.ModuleType("torchvision._meta_registrations"))
    import torchvision  # noqa: PLC0415 - after the pre-emption above

    return torchvision


def pair(value):
    return list(value) if isinstance(value, (tuple, list)) else [value, value]


def conv_record(module, shape) -> dict:
    if isinstance(module.padding, str):
        raise ValueError(f"{module}: padding={module.padding!r}; the table stores numbers")
    if module.padding_mode != "zeros":
        raise ValueError(f"{module}: padding_mode={module.padding_mode!r} is not in the table")
    return {"input": list(shape), "out_channels": module.out_channels,
            "kernel": pair(module.kernel_size), "stride": pair(module.stride),
            "padding": pair(module.padding), "dilation": pair(module.dilation),
            "groups": module.groups, "bias": module.bias is not None}


def model_convs(torch, torchvision, name: str, size: int) -> list[dict]:
    """The model's Conv2d calls on one batch-1 input, each distinct one with its count."""
    model = torchvision.models.get_model(name, weights=None).eval()
    seen: dict[str, dict] = {}

    def hook(module, inputs, _output):
        record = conv_record(module, inputs[0].shape)
        key = json.dumps(record, sort_keys=True)
        seen.setdefault(key, {**record, "count": 0})["count"] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for handle in handles:
        handle.remove()
    return list(seen.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torchvision = import_torchvision()
    import torch  # noqa: PLC0415

    models = {}
    for name, size in MODELS.items():
        convs = model_convs(torch, torchvision, name, size)
        models[name] = {"input_size": size, "convs": convs}
        print(f"{name:20s} {size}x{size}: {sum(c['count'] for c in convs):3d} convs, "
              f"{len(convs):3d} distinct", flush=True)
    table = {"source": f"torchvision {torchvision.__version__}, torch {torch.__version__}, "
                       "weights=None, eval mode, batch 1, forward hooks on nn.Conv2d",
             "extracted": datetime.date.today().isoformat(), "models": models}
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
