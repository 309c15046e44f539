"""Layers from outside the zoo's classification models, timed as `convc bench --zoo` times its
corpus (convc NCHW/NHWC beside PyTorch contiguous/channels_last, paired rounds): segmentation,
detection, generative and audio networks, batch sizes other than 1, channel counts no model
here uses. None of them was used to tune a schedule; they check that the schedules generalize.

    python benchmarks/heldout.py [--repeat 3] [--ops forward,grad_input,grad_weight]

Needs PyTorch (`pip install -e '.[torch]'`).
"""

import argparse

from convc.bench import Conv2d
from convc.bench import zoo


def conv(n, c, h, w, k, kernel, stride=1, padding=None, dilation=1, groups=1):
    pad = (dilation * (kernel - 1)) // 2 if padding is None else padding
    return Conv2d(n, c, h, w, k, (kernel, kernel), (stride, stride), (pad, pad),
                  (dilation, dilation), groups)


# (where it comes from, layer)
HELDOUT = [
    ("U-Net 128x128", conv(1, 64, 128, 128, 64, 3)),
    ("U-Net 128x128", conv(1, 256, 32, 32, 256, 3)),
    ("U-Net 128x128 out", conv(1, 64, 128, 128, 2, 1)),
    ("DeepLabv3 ASPP d12", conv(1, 2048, 33, 33, 256, 3, dilation=12)),
    ("DeepLabv3 backbone d2", conv(1, 256, 33, 33, 256, 3, dilation=2)),
    ("DeepLabv3 ASPP 1x1", conv(1, 2048, 33, 33, 256, 1)),
    ("YOLOv5s stem 6x6/2", conv(1, 3, 320, 320, 32, 6, stride=2, padding=2)),
    ("YOLOv5s 3x3/2", conv(1, 32, 160, 160, 64, 3, stride=2)),
    ("YOLOv5s CSP 1x1", conv(1, 64, 80, 80, 32, 1)),
    ("YOLOv5s head 1x1", conv(1, 128, 40, 40, 255, 1)),
    ("EfficientNet-B3 dw 5x5/2", conv(1, 144, 75, 75, 144, 5, stride=2, groups=144)),
    ("EfficientNet-B3 dw 5x5", conv(1, 816, 10, 10, 816, 5, groups=816)),
    ("EfficientNet-B3 1x1", conv(1, 136, 19, 19, 816, 1)),
    ("ConvNeXt dw 7x7 batch 4", conv(4, 192, 28, 28, 192, 7, groups=192)),
    ("ViT patch embed 16x16/16", conv(1, 3, 224, 224, 768, 16, stride=16, padding=0)),
    ("spectrogram stem", conv(1, 1, 128, 431, 32, 3)),
    ("spectrogram 3x3/2", conv(1, 32, 64, 216, 64, 3, stride=2)),
    ("odd channels", conv(1, 100, 50, 50, 200, 3)),
    ("odd channels 5x5", conv(1, 33, 31, 31, 65, 5)),
    ("odd channels batch 4", conv(4, 7, 100, 100, 13, 3)),
    ("grouped 16/group batch 2", conv(2, 192, 28, 28, 192, 3, groups=12)),
    ("grouped 4/group", conv(1, 240, 14, 14, 240, 3, groups=60)),
    ("batch 16", conv(16, 64, 28, 28, 64, 3)),
    ("batch 16 1x1", conv(16, 256, 14, 14, 64, 1)),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--ops", default=",".join(zoo.OPS))
    args = p.parse_args()
    try:
        import torch  # noqa: F401 - the peer every row is timed against
    except ImportError:
        raise SystemExit("benchmarks/heldout.py times convc beside PyTorch: "
                         "pip install -e '.[torch]'") from None
    layers = [zoo.ZooLayer(layer, ((where, 1),)) for where, layer in HELDOUT]
    ops = tuple(args.ops.split(","))
    rows = zoo.run(layers, ops, args.repeat,
                   progress=lambda r: print(f"  {r.layer.name} {r.op}: ratio {r.ratio:.2f}",
                                            flush=True))
    print(zoo.table(rows))
    for op in ops:
        print(f"{op} ratios, best format:   "
              + zoo.distribution([r.ratio for r in rows if r.op == op]))
        print(f"{op} ratios, NCHW vs NCHW:  "
              + zoo.distribution([r.ratio_nchw for r in rows if r.op == op]))
    print("geo-mean per op, best format / NCHW: " + ", ".join(
        f"{op} {zoo.geomean([r.ratio for r in rows if r.op == op]):.2f} / "
        f"{zoo.geomean([r.ratio_nchw for r in rows if r.op == op]):.2f}" for op in ops))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
