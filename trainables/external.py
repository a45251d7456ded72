"""Models from outside the catalog: a torchvision classification builder (`model: {name: torchvision.<builder>}`),
a timm model (`model: {name: timm.<model>}`) or a factory of your own (`model: {factory: "module:function"}`).

Their other keys are the builder's keyword arguments, checked against its signature. The config check
(trainables.config) checks the form only and imports nothing; the space checker (spaces.validation: `gce-search
validate` and `run`, before Ray starts) and trainables.models at build time check that the builder, timm model or
factory exists and takes those keywords, importing torchvision, timm or the factory's module only then, so a config
that names only catalogued models validates without torch.
"""
from __future__ import annotations

import difflib
import inspect
import typing
from functools import lru_cache
from typing import Any, Callable

from gce_search.trainables.registry import Param
from gce_search.trainables.user_code import import_reference, is_reference

TORCHVISION = "torchvision."
TIMM = "timm."
PREFIXES = (TORCHVISION, TIMM)
TIMM_INSTALL = 'pip install "gce-search[timm]"'
FACTORY_FORM = '"module:function" (e.g. "my_pkg.nets:make_net"), the module importable where the trials run'
# The first three arguments of a factory, given by the trial (the data's shape and class count).
FACTORY_ARGS = ("in_channels", "num_classes", "image_size")
# Keywords gce-search sets itself: the data's shape, the class count and untrained weights.
TORCHVISION_SET = ("weights", "progress", "num_classes")
TIMM_SET = ("pretrained", "num_classes", "in_chans", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path",
            "cache_dir")


class ModelNameError(ValueError):
    """A model section names a builder, timm model or factory that does not exist (the message is one problem line)."""


def is_external_name(name: Any) -> bool:
    """Whether `model.name` names a torchvision builder or a timm model (rather than a catalogued model)."""
    return isinstance(name, str) and name.startswith(PREFIXES)


def is_external(section: Any) -> bool:
    """Whether a `model:` section is built from outside the catalog (a torchvision or timm name, or a factory)."""
    return isinstance(section, dict) and ("factory" in section or is_external_name(section.get("name")))


def describe(section: dict) -> str:
    """The model of a section in a few words, for the console: its name, or its factory."""
    return str(section.get("name") or section.get("factory"))


def _close(name: str, valid: list[str], n: int = 3) -> str:
    close = difflib.get_close_matches(name, valid, n=n, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


# --------------------------------------------------------------------------------------------- torchvision and timm


@lru_cache(maxsize=None)
def torchvision_names() -> tuple[str, ...]:
    import torchvision.models

    return tuple(torchvision.models.list_models(module=torchvision.models))


def torchvision_builder(name: str) -> Callable:
    """The torchvision classification builder of `model.name: torchvision.<builder>`; ModelNameError naming
    model.name when there is none."""
    short = name[len(TORCHVISION):]
    try:
        import torchvision.models
    except ImportError as e:  # a dependency of gce-search: only a broken install gets here
        raise ModelNameError(f"model.name: {name!r} needs torchvision, which does not import ({e}); valid: "
                             f"pip install torchvision (the version that matches torch)") from None
    valid = torchvision_names()
    if short not in valid:
        raise ModelNameError(f"model.name: {name!r} is not a torchvision classification model"
                             f"{_close(short, list(valid))}; valid: torchvision.<one of "
                             f"torchvision.models.list_models(module=torchvision.models)>, e.g. torchvision.resnet18")
    return torchvision.models.get_model_builder(short)


def _timm():
    try:
        import timm
    except ImportError:
        return None
    return timm


def timm_entrypoint(name: str) -> Callable:
    """The timm entry point of `model.name: timm.<model>`; ModelNameError naming model.name when timm is missing or
    has no such model."""
    short = name[len(TIMM):]
    timm = _timm()
    if timm is None:
        raise ModelNameError(f"model.name: {name!r} needs timm, which is not installed; valid: {TIMM_INSTALL}, or a "
                             f"catalogued or torchvision model")
    if not timm.is_model(short):
        raise ModelNameError(f"model.name: {name!r} is not a timm model{_close(short, timm.list_models())}; valid: "
                             f"timm.<one of timm.list_models()>, e.g. timm.resnet18")
    return timm.models.model_entrypoint(short)


def _returned_class(fn: Callable) -> type | None:
    """The nn.Module class a builder is annotated to return (torchvision's and timm's builders are)."""
    try:
        hint = typing.get_type_hints(fn).get("return")
    except Exception:  # an annotation that does not resolve: no class to read keywords from
        hint = None
    return hint if inspect.isclass(hint) else None


def _keywords(fn: Callable, skip: tuple[str, ...], start: int = 0) -> tuple[dict[str, inspect.Parameter], bool]:
    """(keyword parameters of `fn` from its `start`-th parameter on, minus `skip`; whether it takes **kwargs)."""
    try:
        params = list(inspect.signature(fn).parameters.values())[start:]
    except (TypeError, ValueError):
        return {}, True
    out, var_kw = {}, False
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind is not p.VAR_POSITIONAL and p.name not in skip:
            out[p.name] = p
    return out, var_kw


def _param_of(p: inspect.Parameter) -> Param | None:
    """A Param checking the type of a keyword's default (bool, int, float, str); None: any value."""
    d = p.default
    if isinstance(d, bool):
        return Param(d, kind="bool")
    if isinstance(d, int):
        return Param(d, kind="int")
    if isinstance(d, float):
        return Param(d, kind="float")
    if isinstance(d, str):
        return Param(d, kind="str")
    return None


@lru_cache(maxsize=256)
def _library_keywords(name: str) -> tuple[dict[str, Param | None], bool]:
    """The keywords a torchvision or timm model takes beyond what gce-search sets: the builder's own and, where it
    passes **kwargs on, those of the class it returns that have a default (those without are the builder's to set,
    like a ResNet's block and layers). (name -> Param or None, whether any other keyword is accepted too)."""
    if name.startswith(TORCHVISION):
        fn, skip = torchvision_builder(name), TORCHVISION_SET
    else:
        fn, skip = timm_entrypoint(name), TIMM_SET
    own, var_kw = _keywords(fn, skip)
    params = {k: _param_of(p) for k, p in own.items() if p.default is not p.empty}
    open_ended = False
    if var_kw:
        cls = _returned_class(fn)
        if cls is None:
            open_ended = True
        else:
            init, cls_var_kw = _keywords(cls.__init__, skip + ("in_chans",), start=1)
            # The input size has no default in some classes (torchvision's ViT): gce-search sets it from the data.
            params.update({k: _param_of(p) for k, p in init.items()
                           if (p.default is not p.empty or k in ("image_size", "img_size")) and k not in params})
            open_ended = cls_var_kw
    return params, open_ended


# ---------------------------------------------------------------------------------------------------------- factory


def load_factory(spec: Any) -> Callable:
    """The callable `model.factory` names, importing its module; ModelNameError naming model.factory otherwise."""
    return import_reference(spec, "model.factory", FACTORY_FORM,
                            "a function (in_channels, num_classes, image_size, **params) -> nn.Module",
                            error=ModelNameError)


def _factory_keywords(spec: str) -> tuple[dict[str, Param | None], bool]:
    fn = load_factory(spec)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return {}, True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_three = len(positional) >= 3 or any(p.kind is p.VAR_POSITIONAL for p in params)
    if not takes_three:
        raise ModelNameError(f"model.factory: {spec!r} takes {len(positional)} positional argument(s); valid: a "
                             f"function (in_channels, num_classes, image_size, **params) -> nn.Module")
    own, var_kw = _keywords(fn, FACTORY_ARGS, start=3 if len(positional) >= 3 else 0)
    return {k: (Param(p.default, kind="bool") if isinstance(p.default, bool) else None) for k, p in own.items()}, \
        var_kw


# -------------------------------------------------------------------------------------------------------- checking


def keywords(section: dict) -> tuple[dict[str, Param | None], bool]:
    """The parameters an external model section may set: name -> Param (None: any value), and whether keywords
    beyond those are accepted (a builder taking **kwargs whose receiver is unknown). ModelNameError naming
    model.name / model.factory when the model does not exist."""
    if "factory" in section:
        return _factory_keywords(section["factory"])
    return _library_keywords(section["name"])


def form_problems(section: dict, path: str = "model") -> list[str]:
    """What is wrong with the form of an external `model:` section, importing nothing (the config check: reading
    an experiment's results needs neither timm nor your module)."""
    if "factory" in section and "name" in section:
        return [f"{path}.factory: given together with {path}.name {section['name']!r}; valid: one of them (name: a "
                f"catalogued, torchvision.<builder> or timm.<model> name; factory: {FACTORY_FORM})"]
    if "factory" in section:
        if not is_reference(section["factory"]):
            return [f"{path}.factory: got {section['factory']!r}; valid: {FACTORY_FORM}"]
        return []
    name = section["name"]
    if not name.partition(".")[2]:
        return [f"{path}.name: got {name!r}; valid: torchvision.<builder> or timm.<model>, e.g. torchvision.resnet18"]
    return []


def section_problems(section: dict, path: str = "model") -> list[str]:
    """Every problem of an external `model:` section, one `<path>.<key>: ...; valid: ...` line each: its form,
    whether the builder, timm model or factory exists (importing torchvision, timm or the factory's module), and
    its other keys against the builder's keywords (the space checker, `gce-search validate`, and build time)."""
    problems = form_problems(section, path)
    if problems:
        return problems
    try:
        params, open_ended = keywords(section)
    except ModelNameError as e:
        return [str(e).replace("model.", f"{path}.", 1)]
    problems = []
    what = f"factory {section['factory']!r}" if "factory" in section else f"model {section['name']!r}"
    for key, value in section.items():
        if key in ("name", "factory"):
            continue
        if key not in params:
            if not open_ended:
                valid = ", ".join(params) or "none"
                problems.append(f"{path}.{key}: not a keyword of {what}{_close(str(key), list(params), 1)}; "
                                f"valid: {valid}")
            continue
        param = params[key]
        p = param.problem(value) if param is not None else None
        if p is not None:
            problems.append(f"{path}.{key}: {p}; valid: {param.describe()} (the type of its default)")
    return problems


def config_problems(cfg: dict) -> list[str]:
    """The problems of a resolved trial config's `model:` section when it is built from outside the catalog (its
    name or factory and keywords, importing what it names); [] for a catalogued model. `gce-search train` checks
    this before anything is written."""
    section = cfg.get("model")
    return section_problems(section) if is_external(section) else []


def name_problem(name: str) -> str | None:
    """What is wrong with an external `model.name` (a searched choice, say), or None."""
    try:
        keywords({"name": name})
    except ModelNameError as e:
        return str(e).split(": ", 1)[1]
    return None


def target_param(section: dict, key: str) -> tuple[bool, Param | None]:
    """(whether `key` is a parameter of the external model section, the Param checking its values or None)."""
    try:
        params, open_ended = keywords(section)
    except ModelNameError:
        return True, None  # the name itself is reported by the config check
    if key in params:
        return True, params[key]
    return open_ended, None
