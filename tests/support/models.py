"""Model weights for tests: the authors' v2 golden fill (../shared/reference/README.md)."""
import numpy as np
import torch

# The v2 weight fill of ../shared/reference/README.md ("Golden vectors"). the inference, ONNX and
# TensorRT tests reuse it to give small models weights of realistic scale.
_P = 65521
_V2_GAINS = (  # matched on the name suffix, first match wins
    ("conv1d.conv1d.weight", 6.0),
    ("conv1.weight", 2.0),
    ("output.weight", 2.0),
    ("res.weight", 1.0),
    ("film_fc.weight", 0.004),
)


def v2_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Tensor k, flat index i: h = (7r² + 13r + 101k) mod P with r = i mod P (exact integers),
    u = h/P − 0.5, then the per-name rule, all in float64, cast to the tensor's dtype.

    Every rule but film_fc.bias's is elementwise, so it is applied to one period of u and the result
    tiled: the same values as filling element by element, in a fraction of the time."""
    r = np.arange(_P, dtype=np.int64)
    base = (7 * r * r + 13 * r) % _P
    filled = {}
    for k, (name, t) in enumerate(model.state_dict().items()):
        if name.endswith("num_batches_tracked"):
            filled[name] = torch.zeros_like(t)
            continue
        n = t.numel()
        u = ((base + 101 * k) % _P)[:n] / _P - 0.5
        if name.endswith("running_var"):
            v = 1 + 0.2 * (u + 0.5)
        elif name.endswith("film_fc.bias"):
            u = np.resize(u, n)
            v = np.concatenate([1 + 0.2 * u[:n // 2], 0.1 * u[n // 2:]])
        elif t.dim() >= 2:
            gain = next(g for suffix, g in _V2_GAINS if name.endswith(suffix))
            v = 2 * u * np.sqrt(gain / (n / t.shape[0]))
        elif name.endswith(("bn.weight", "batch_norm.weight")):
            v = 1 + 0.2 * u
        else:
            v = 0.1 * u
        filled[name] = torch.from_numpy(np.resize(v.astype(np.float32), n).reshape(t.shape)).to(t.dtype)
    return filled


def v2_model(model: torch.nn.Module) -> torch.nn.Module:
    model.load_state_dict(v2_state_dict(model), strict=True)
    return model.eval()
