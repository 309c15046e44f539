"""Test workloads, grouped by where they come from. Each entry: (id, ConvSpec arguments).

Shapes are kept small enough for a 2-core CI machine but chosen so that no natural tile size
(4, 8, 16) divides them where "odd" is in the name.
"""

from conftest import make_spec

# (input_shape, weight_shape, stride, padding, dilation, groups), channels-first
RESNET = {
    "resnet_3x3": ((1, 16, 14, 14), (16, 16, 3, 3), 1, 1, 1, 1),
    "resnet_3x3_s2": ((2, 16, 14, 14), (32, 16, 3, 3), 2, 1, 1, 1),
    "resnet_1x1": ((2, 32, 7, 7), (16, 32, 1, 1), 1, 0, 1, 1),
    "resnet_1x1_s2": ((1, 16, 9, 9), (24, 16, 1, 1), 2, 0, 1, 1),
    "resnet_stem_7x7_s2": ((1, 3, 23, 23), (8, 3, 7, 7), 2, 3, 1, 1),
}
ODD = {
    "odd_3x3": ((3, 5, 13, 11), (7, 5, 3, 3), 1, 1, 1, 1),
    "odd_rect_kernel": ((1, 3, 10, 17), (5, 3, 2, 5), 1, (0, 2), 1, 1),
    "odd_stride_skips_rows": ((1, 3, 8, 8), (4, 3, 3, 3), 3, 0, 1, 1),   # last input row unused
    "odd_pad_beyond_kernel": ((2, 3, 5, 6), (4, 3, 1, 1), 1, 2, 1, 1),    # pad > d*(k-1): crop in dx
    "odd_big_pad_stride": ((1, 2, 6, 7), (3, 2, 3, 2), (2, 3), (3, 2), 1, 1),
}
ASYMMETRIC = {
    "asym_pad_pairs": ((1, 4, 9, 10), (6, 4, 3, 3), 1, ((1, 2), (0, 3)), 1, 1),
    "asym_pad_strided": ((2, 3, 11, 8), (5, 3, 3, 4), 2, ((0, 1), (2, 0)), 1, 1),
    "same_even_kernel": ((1, 3, 7, 8), (4, 3, 4, 2), 1, "same", 1, 1),
    "same_dilated": ((1, 3, 9, 9), (4, 3, 3, 3), 1, "same", 2, 1),
    "valid": ((1, 3, 9, 6), (4, 3, 3, 3), 1, "valid", 1, 1),
}
GROUPED = {
    f"s{s}_d{d}_g{g}": ((2, 4, 11, 10), (6, 4 // g, 3, 3), s, 1, d, g)
    for s in (1, 2, 3) for d in (1, 2) for g in (1, 2)
}
GROUPED.update({
    "depthwise": ((1, 8, 12, 9), (8, 1, 3, 3), 1, 1, 1, 8),
    "depthwise_multiplier_s2": ((2, 6, 11, 11), (12, 1, 3, 3), 2, 1, 1, 6),
    "groups_3_odd": ((1, 9, 7, 8), (6, 3, 3, 2), 1, (1, 0), 1, 3),
})
ONE_D = {
    "1d_basic": ((2, 4, 19), (6, 4, 5), 2, 2, 3, 1),
    "1d_grouped": ((1, 6, 16), (4, 3, 3), 1, "same", 1, 2),
    "1d_depthwise": ((3, 5, 10), (5, 1, 4), 3, ((1, 2),), 1, 5),
}
THREE_D = {
    "3d_basic": ((1, 3, 6, 7, 5), (4, 3, 3, 3, 2), 1, 1, 1, 1),
    "3d_strided_grouped": ((2, 4, 7, 6, 6), (6, 2, 3, 2, 3), (2, 1, 2), (1, 0, 1), (1, 2, 1), 2),
    "3d_depthwise": ((1, 4, 5, 5, 5), (4, 1, 3, 3, 3), 1, ((0, 2), (1, 1), (2, 0)), 1, 4),
}
FAMILIES = {"resnet": RESNET, "odd": ODD, "asymmetric": ASYMMETRIC, "grouped": GROUPED,
            "1d": ONE_D, "3d": THREE_D}


def spec_params(dtype="float32", layouts=("first", "last"), families=None, bias_every=3):
    """pytest params: (id, spec) for every workload x layout, bias on every `bias_every`-th."""
    import pytest

    from convc.spec import LAYOUTS

    params = []
    for family, table in FAMILIES.items():
        if families and family not in families:
            continue
        for i, (name, (xs, ws, s, p, d, g)) in enumerate(table.items()):
            ndim = len(xs) - 2
            for which in layouts:
                first, last = LAYOUTS[ndim]
                if which == "first":
                    spec = make_spec(xs, ws, s, p, d, g, dtype=dtype, bias=i % bias_every == 0)
                else:
                    n, c, *sp = xs
                    o, ci, *k = ws
                    spec = make_spec((n, *sp, c), (*k, ci, o), s, p, d, g, layout=last,
                                     dtype=dtype, bias=i % bias_every == 1)
                params.append(pytest.param(spec, id=f"{name}-{spec.layout}-{dtype}"))
    return params


def varied_params(vary, dtype, layouts=("first", "last"), families=None):
    """pytest params: each workload of spec_params in one layout (the layouts taking turns),
    made into `vary(spec, i)` for the workload's index i (the tests of a fused variant)."""
    import pytest

    params = []
    for i, param in enumerate(spec_params(dtype, layouts, families)):
        workload, layout = divmod(i, len(layouts))
        if workload % len(layouts) == layout:
            spec = vary(param.values[0], workload)
            params.append(pytest.param(spec, id=f"{param.id}-{spec.key.split('_g')[-1]}"))
    return params
