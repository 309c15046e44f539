"""The zoo corpus's dense 3x3 stride-1 layers (issue 18's "other 3x3 stride-1 layers of the zoo
corpus"), forward and grad_input, paired with PyTorch, best format each side.

    python benchmarks/zoo3x3s1.py OUT.json [REPEAT]

Prints one line per kernel (ratio = PyTorch best / convc best, median over paired rounds), then
the geo-mean, how many are below 1.3 and 1.0 and the lowest, per op; OUT.json gets the rows
(convc.bench.zoo.save). About 5 minutes on 2 cores with REPEAT 7.
"""

import sys
import time

from convc.bench import geomean, zoo


def main(out: str, repeat: int = 5) -> None:
    layers, _ = zoo.load()
    picked = [z for z in layers if z.layer.kernel == (3, 3) and z.layer.stride == (1, 1)
              and z.layer.dilation == (1, 1) and z.layer.groups == 1]
    print(f"{len(picked)} layers, repeat {repeat}, start {time.strftime('%H:%M:%S')}", flush=True)
    rows = zoo.run(picked, ops=("forward", "grad_input"), repeat=repeat,
                   progress=lambda r: print(f"{r.layer.name:24s} {r.op:10s} {r.ratio or 0:5.2f} "
                                            f"{r.convc_layout} {r.schedule}", flush=True))
    zoo.save(rows, out)
    for op in ("forward", "grad_input"):
        ratios = [r.ratio for r in rows if r.op == op and r.ratio]
        print(f"{op}: geo-mean {geomean(ratios):.2f} over {len(ratios)}, below 1.3: "
              f"{sum(r < 1.3 for r in ratios)}, below 1.0: {sum(r < 1.0 for r in ratios)}, "
              f"lowest {min(ratios):.2f}")
    print("end", time.strftime("%H:%M:%S"))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5)
