"""The hook engine behind `interp.intervene`, `interp.generate` and generation-time capture.

Why plain torch hooks here and nnsight elsewhere: the context-manager form must wrap *any* call
(a user's own `pipe(...)`, a training loop, an nnsight trace) and a diffusion pipeline calls the
text encoder once per prompt batch and the denoiser once (or twice) per step with CFG rows.
A forward hook handles every such call with no tracing cost and is removed with certainty in
`finally`. nnsight is used where a single traced forward is the job: encoder capture
(`interp.methods.capture`) and patching, and `capture_generation(..., engine="nnsight")`.

Where an edit happens (`Where`) is kept per model by one `_Runtime` shared by all open sessions:
- a pipeline call starts when the pipeline object is called (its class is swapped for a
  subclass whose `__call__` tells the runtime, for the session's duration): the step counter,
  the text-encoder call counts and the prompt count B restart there;
- the denoising step is the number of `scheduler.step` calls so far in that pipeline call
  (`set_timesteps` gives the run's step count, against which `steps=` is checked);
- CFG branches: the i-th call of a text encoder in a pipeline call encodes the prompt (i = 0)
  or the negative prompt (i = 1); a denoiser call with 2B rows holds [uncond; cond], one with B
  rows the conditional branch (FLUX's true CFG: the second call of a step is the negative).
Denoiser q/k/v/z/pattern sites run inside our attention processors (interp/engine/attention.py),
installed on the named attention modules only while a session needs them, and calling the
original processor whenever nothing acts at that call. Text q/k/v/z sites are plain forward
(pre-)hooks on the projections (`Site.view` / `unview` give the per-head layout).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from interp.engine.apply import apply_all, is_active
from interp.engine.attention import PROCESSORS, WRITES, check_supported, style_of
from interp.errors import CultureLensError, SiteError
from interp.interventions import BRANCHES, Intervention, Where, check_branch, check_indexing
from interp.model.sites import PROC_HOOKS, Site, check_indices, edit_through, parse, resolve_module

Recorder = Callable[[Site, torch.Tensor, Where], None]


def resolve_intervention(model: Any, iv: Any) -> Site:
    """Check that `iv` is an intervention on a writable site of `model` with in-range units,
    steps only at denoiser sites, heads only where there are heads, and a valid branch; return its
    site (and fill in the units' pool size, which `random_units` needs)."""
    if not (isinstance(iv, Intervention) or (hasattr(iv, "site") and callable(getattr(iv, "apply_at", None)))):
        raise CultureLensError(f"{iv!r} is not an intervention (interp.Intervention): it needs .site and .apply(act)")
    site = parse(model, iv.site)
    if not site.writable:
        raise SiteError(f"site {site.name!r} is read-only (text attention patterns cannot be edited)")
    check_branch(iv)
    check_indexing(iv)  # lists of ints (steps=5 is not a list of step indices), for any intervention
    units = getattr(iv, "units", None)
    if units is not None:
        check_indices(site, units.indices)
        if getattr(units, "dim", None) is None:
            units.dim = site.dim
    steps = getattr(iv, "steps", None)
    if steps is not None:
        if not site.denoiser:
            raise SiteError(f"{iv!r}: steps={list(steps)} at text site {site.name!r}; the text encoder runs once per "
                            "prompt, not per denoising step (steps= applies to unet./transformer. sites)")
        bad = [s for s in steps if not isinstance(s, int) and not (torch.is_tensor(s) and s.ndim == 0)]
        if bad or any(int(s) < 0 for s in steps):
            raise CultureLensError(f"{iv!r} at {site.name!r}: steps must be non-negative step indices, got {list(steps)}")
    heads = getattr(iv, "heads", None)
    if heads is not None:
        if site.head_axis is None:
            raise SiteError(f"{iv!r}: heads={list(heads)} at {site.name!r}, a site without heads (heads exist at "
                            "hook_q, hook_k, hook_v, hook_z and hook_pattern)")
        bad = [int(h) for h in heads if not 0 <= int(h) < site.dim]
        if bad:
            raise SiteError(f"{iv!r} at {site.name!r}: heads {bad} out of range; valid heads are 0..{site.dim - 1}")
    if getattr(iv, "positions", None) is not None and site.position_axis is None:
        raise SiteError(f"{iv!r}: positions= at {site.name!r}, a [B, C, h, w] feature map; use units (channels) "
                        "or a q/k/v/z site for positions")
    return site


class _Runtime:
    """Per-model state shared by all open sessions: where the current call is, and the wrappers
    (pipeline call, scheduler, encoder and denoiser pre-hooks, attention processors) that track it."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.sessions: list[HookSession] = model.engine.sessions
        self.in_call = False
        self.batch: int | None = None
        self.flux_true_cfg = False
        self.step = 0
        self.n_steps: int | None = None
        self.call_in_step = 0
        self.text_calls: dict[str, int] = defaultdict(int)
        self.text_branch: dict[str, int | None] = {}
        self.row_branches: torch.Tensor | None = None
        self._undo: list[Callable[[], None]] = []
        self._procs: dict[str, list[Any]] = {}  # module path -> [module, original processor, refcount]

    # -- install / remove the shared wrappers ---------------------------------------------------
    def install(self) -> None:
        model, pipe = self.model, self.model.pipe
        self._wrap_pipeline_call(pipe)
        sched = getattr(pipe, "scheduler", None)
        if sched is not None:
            self._wrap_method(sched, "set_timesteps", self._after_set_timesteps)
            self._wrap_method(sched, "step", self._after_scheduler_step)
        for prefix, enc in model.encoders.items():
            h = enc.module.register_forward_pre_hook(functools.partial(self._text_call, prefix))
            self._undo.append(h.remove)
        if model.has_denoiser:  # an encoder-only model has text sites only
            h = model.denoiser.register_forward_pre_hook(self._denoiser_call, with_kwargs=True)
            self._undo.append(h.remove)

    def remove(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        for module, original, _ in self._procs.values():
            module.set_processor(original)
        self._procs.clear()

    def _wrap_pipeline_call(self, pipe: Any) -> None:
        cls = type(pipe)
        runtime = self

        def __call__(this: Any, *args: Any, **kwargs: Any) -> Any:
            runtime.begin_call(cls, this, args, kwargs)
            try:
                out = cls.__call__(this, *args, **kwargs)
            except BaseException:
                runtime.in_call = False
                raise
            runtime.end_call()
            return out

        sub = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                          "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})
        pipe.__class__ = sub

        def undo() -> None:
            if type(pipe) is sub:
                pipe.__class__ = cls

        self._undo.append(undo)

    def _wrap_method(self, obj: Any, name: str, after: Callable[[Any], None]) -> None:
        original = getattr(obj, name)

        @functools.wraps(original)  # keeps the signature: diffusers inspects set_timesteps' parameters
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            after(obj)
            return out

        had = name in obj.__dict__
        old = obj.__dict__.get(name)
        setattr(obj, name, wrapped)

        def undo() -> None:
            if had:
                setattr(obj, name, old)
            else:
                obj.__dict__.pop(name, None)

        self._undo.append(undo)

    # -- call tracking --------------------------------------------------------------------------
    def begin_call(self, cls: type, pipe: Any, args: tuple, kwargs: dict) -> None:
        self.in_call, self.step, self.call_in_step, self.n_steps = True, 0, 0, None
        self.text_calls = defaultdict(int)
        self.text_branch = {}
        try:
            bound = inspect.signature(cls.__call__).bind(pipe, *args, **kwargs).arguments
        except TypeError:
            bound = {}
        prompt, embeds = bound.get("prompt"), bound.get("prompt_embeds")
        n = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else (
            int(embeds.shape[0]) if embeds is not None else None)
        per = bound.get("num_images_per_prompt") or 1
        self.batch = None if n is None else n * int(per)
        neg = bound.get("negative_prompt") is not None or bound.get("negative_prompt_embeds") is not None
        self.flux_true_cfg = self.model.family == "flux" and float(bound.get("true_cfg_scale") or 1.0) > 1 and neg
        if self.model.family == "flux" and not self.flux_true_cfg:
            uncond = [iv for sess in self.sessions for ivs in sess.by_site.values() for iv in ivs
                      if check_branch(iv) == "uncond"]
            if uncond:
                self.in_call = False
                raise CultureLensError(
                    f"{uncond[0]!r}: branch='uncond' on FLUX, but this call has no unconditional branch: FLUX's "
                    "guidance is embedded (guidance= is an input of the transformer, not classifier-free guidance), "
                    "so each prompt is one row, the conditional one. Use branch='cond' or 'both', or run real CFG "
                    "with true_cfg_scale > 1 and a negative_prompt")

    def end_call(self) -> None:
        self.in_call = False
        for sess in self.sessions:
            for name, ivs in sess.by_site.items():
                site = sess.sites[name]
                if site.denoiser or self.text_calls.get(site.encoder, 0) > 1:
                    continue
                if any(check_branch(iv) == "uncond" for iv in ivs):
                    warnings.warn(
                        f"{name}: an intervention with branch='uncond' did not act: the pipeline did not encode a "
                        f"negative prompt with {site.encoder} in this call (e.g. guidance ≤ 1, or SDXL's "
                        "force_zeros_for_empty_prompt with no negative_prompt)", stacklevel=3)

    def _after_set_timesteps(self, sched: Any) -> None:
        self.step, self.call_in_step = 0, 0
        self.n_steps = len(sched.timesteps)
        for sess in self.sessions:
            for name, ivs in sess.by_site.items():
                for iv in ivs:
                    steps = getattr(iv, "steps", None)
                    bad = [int(s) for s in steps or () if int(s) >= self.n_steps]
                    if bad:
                        raise CultureLensError(
                            f"{iv!r} at {name!r}: steps {bad} out of range; this run has {self.n_steps} denoising "
                            f"steps (0..{self.n_steps - 1})")

    def _after_scheduler_step(self, sched: Any) -> None:
        self.step += 1
        self.call_in_step = 0

    def _text_call(self, prefix: str, module: Any, args: Any) -> None:
        if not self.in_call:
            self.text_branch[prefix] = BRANCHES["cond"]
            return
        i = self.text_calls[prefix]
        self.text_calls[prefix] = i + 1
        self.text_branch[prefix] = {0: BRANCHES["cond"], 1: BRANCHES["uncond"]}.get(i)

    def _denoiser_call(self, module: Any, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        rows = int(x.shape[0])
        idx = self.call_in_step
        self.call_in_step += 1
        b = self.batch
        if not self.in_call:
            branches = [1] * rows
        elif b is None:
            branches = None
        elif rows == 2 * b:
            branches = [0] * b + [1] * b
        elif rows == b:
            branches = [0 if (self.flux_true_cfg and idx == 1) else 1] * b
        else:
            branches = None
        self.row_branches = None if branches is None else torch.tensor(branches, device=x.device)

    def where(self, site: Site, act: torch.Tensor) -> Where:
        if site.denoiser:
            return Where(site.name, self.step, self.n_steps, self.row_branches)
        branch = self.text_branch.get(site.encoder, BRANCHES["cond"])
        rows = None if branch is None else torch.full((act.shape[0],), branch, dtype=torch.long, device=act.device)
        return Where(site.name, None, self.n_steps if self.in_call else None, rows)

    # -- attention processors -----------------------------------------------------------------
    def need_processor(self, site: Site) -> None:
        entry = self._procs.get(site.module_path)
        if entry is not None:
            entry[2] += 1
            return
        module = resolve_module(self.model, site)
        style = style_of(self.model.family)
        original = module.processor
        check_supported(style, original, site.name)
        stem = site.name.rsplit(".", 1)[0]
        proc = PROCESSORS[style](original, functools.partial(self._wanted, site.module_path),
                                 functools.partial(self._proc_edit, site.module_path, stem))
        module.set_processor(proc)
        self._procs[site.module_path] = [module, original, 1]

    def release_processor(self, site: Site) -> None:
        entry = self._procs.get(site.module_path)
        if entry is None:
            return
        entry[2] -= 1
        if entry[2] <= 0:
            entry[0].set_processor(entry[1])
            del self._procs[site.module_path]

    def _wanted(self, path: str) -> set[str]:
        """The hooks of this attention module that a session reads or edits at the current call;
        `hook + WRITES` for each one an intervention may change (all but `reads_only` ones)."""
        want: set[str] = set()
        for sess in self.sessions:
            for hook in PROC_HOOKS:
                site = sess.proc_sites.get((path, hook))
                if site is None:
                    continue
                where = self.where(site, torch.empty(0))
                active = [iv for iv in sess.by_site.get(site.name, ()) if is_active(iv, where)]
                if active or (site.name in sess.record and sess.recorder is not None):
                    want.add(hook)
                if any(not getattr(iv, "reads_only", False) for iv in active):
                    want.add(hook + WRITES)
        return want

    def _proc_edit(self, path: str, stem: str, hook: str, act: torch.Tensor) -> torch.Tensor:
        for sess in list(self.sessions):
            site = sess.proc_sites.get((path, hook))
            if site is not None:
                act = sess.edit(site, act)
        return act


def runtime(model: Any) -> _Runtime:
    rt = model.engine.runtime
    if rt is None:
        rt = model.engine.runtime = _Runtime(model)
    return rt


class HookSession:
    """Install interventions (and optional recorders) on a model for the duration of a `with`."""

    def __init__(self, model: Any, interventions: Sequence[Any] = (), record: Sequence[str] = (),
                 recorder: Recorder | None = None) -> None:
        self.model = model
        self.by_site: dict[str, list[Any]] = defaultdict(list)
        self.sites: dict[str, Site] = {}
        for iv in interventions:
            site = resolve_intervention(model, iv)
            self.by_site[site.name].append(iv)
            self.sites[site.name] = site
        for name in record:
            site = parse(model, name)
            self.sites[site.name] = site
        self.record = {parse(model, n).name for n in record}
        self.recorder = recorder
        self.proc_sites = {(s.module_path, s.hook): s for s in self.sites.values() if s.mode == "proc"}
        self._handles: list[Any] = []
        self._procs: list[Site] = []
        self._rt: _Runtime | None = None

    @property
    def step(self) -> int:
        """The current denoising step of the current pipeline call."""
        return runtime(self.model).step

    # -- install / remove -------------------------------------------------------------------
    def __enter__(self) -> "HookSession":
        rt = self._rt = runtime(self.model)
        try:
            if not rt.sessions:
                rt.install()
            # Registered so that an nnsight capture inside the block can report post-hook values.
            rt.sessions.append(self)
            for site in self.sites.values():
                self._install(site)
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._remove()

    def _remove(self) -> None:
        rt = self._rt
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if rt is None:
            return
        for site in self._procs:
            rt.release_processor(site)
        self._procs.clear()
        if self in rt.sessions:
            rt.sessions.remove(self)
        if not rt.sessions:
            rt.remove()
        self._rt = None

    def edit(self, site: Site, act: torch.Tensor) -> torch.Tensor:
        ivs = self.by_site.get(site.name)
        where = runtime(self.model).where(site, act) if (ivs or site.name in self.record) else None
        if ivs:
            act = apply_all(ivs, act, where)
        if site.name in self.record and self.recorder is not None:
            self.recorder(site, act, where)
        return act

    def _install(self, site: Site) -> None:
        if site.mode == "proc":
            self._rt.need_processor(site)
            self._procs.append(site)
            return
        module = resolve_module(self.model, site)
        mode = site.mode
        if site.kind == "pattern":  # text attention probabilities come from eager attention only
            enc = self.model.encoders[site.encoder]
            ctx = enc.eager_attention()
            ctx.__enter__()
            self._handles.append(_Undo(lambda: ctx.__exit__(None, None, None)))
        # The module's tensor -> the site's activation (text q/k/v/z: its per-head view) -> back.
        edit = functools.partial(self.edit, site)
        if mode == "in0":
            def pre(mod: Any, args: tuple) -> tuple:
                return (edit_through(site, args[0], edit),) + tuple(args[1:])

            self._handles.append(module.register_forward_pre_hook(pre))
            return
        k = 0 if mode == "out" else int(mode[3:])

        def post(mod: Any, args: Any, out: Any) -> Any:
            if isinstance(out, torch.Tensor):
                return edit_through(site, out, edit)
            if isinstance(out, tuple):
                items = list(out)
                items[k] = edit_through(site, items[k], edit)
                return tuple(items)
            if hasattr(out, "to_tuple"):  # a diffusers/transformers ModelOutput
                key = list(out.keys())[k]
                out[key] = edit_through(site, out[key], edit)
                return out
            raise CultureLensError(f"site {site.name!r}: unexpected output type {type(out).__name__}")

        self._handles.append(module.register_forward_hook(post))


class _Undo:
    """A handle whose `remove()` runs an undo function (so all cleanups share one list)."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn

    def remove(self) -> None:
        self.fn()


def intervene(model: Any, interventions: Sequence[Any]):
    """`with interp.intervene(model, [...]):` applies the interventions to any forward or pipeline
    call inside the block; every hook and processor is removed on exit, even on exceptions."""
    return HookSession(model, interventions)
