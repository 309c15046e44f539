"""Property-based: random convolutions (rank, layout, stride, dilation, padding, groups, dtype)
checked against the NumPy references."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import check_spec, make_spec
from convc.spec import LAYOUTS


@st.composite
def conv_specs(draw):
    ndim = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.integers(1, 3))
    kg = draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 4 if ndim < 3 else 2)) for _ in range(ndim)]
    dilation = [draw(st.integers(1, 3)) for _ in range(ndim)]
    stride = [draw(st.integers(1, 3)) for _ in range(ndim)]
    pads = [(draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(ndim)]
    size = []
    for k, d, (pb, pa) in zip(kernel, dilation, pads):
        minimum = max(1, d * (k - 1) + 1 - pb - pa)
        size.append(draw(st.integers(minimum, minimum + (9 if ndim < 3 else 4))))
    batch = draw(st.integers(1, 3))
    layout = draw(st.sampled_from(LAYOUTS[ndim]))
    dtype = draw(st.sampled_from(["float32", "float32", "float64"]))
    bias = draw(st.booleans())
    if layout[-1] == "C":
        xs, ws = (batch, *size, cg * groups), (*kernel, cg, kg * groups)
    else:
        xs, ws = (batch, cg * groups, *size), (kg * groups, cg, *kernel)
    return make_spec(xs, ws, stride, tuple(pads), dilation, groups, layout=layout, dtype=dtype,
                     bias=bias)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_specs())
def test_random_convolutions_match_the_reference(spec):
    check_spec(spec)
