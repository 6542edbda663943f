"""The one small interface every engine implements.

The runner owns tokenisation, the workload, timing, meters and the record; an engine only turns token ids into new
token ids. Prompts arrive as *unpadded* token id lists (same tokenisation for every runtime); each engine pads or
schedules them the way its runtime wants and reports which it did in ``describe()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from runners.engines.options import EngineContext, Options
from runners.errors import JobError
from runners.stopping import StopRule

# Called by the engine right after each decode step's tokens exist (on the host, device synchronised), so the runner
# can time the first token and the steps after it without knowing the runtime.
StepHook = Callable[[], None]


@dataclass(frozen=True)
class Shape:
    """The work's dimensions, computed by the runner from the tokenised workload before any window opens: what an
    engine sizes its context, KV cache or compiled graphs by — so it never re-reads or re-tokenises the workload
    inside a measured window."""

    batch_size: int
    prompts: int
    shortest_prompt: int  # tokens
    longest_prompt: int  # tokens
    max_new_tokens: int  # the budget of the longest prompt's batch

    @property
    def context(self) -> int:
        """Room one sequence needs: the longest prompt and its new tokens."""
        return self.longest_prompt + self.max_new_tokens


def module_found(name: str) -> bool:
    """Whether ``import name`` would find the module (a dotted name imports its parents, not the module itself)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package missing, or a half-installed one
        return False


class Engine:
    name: ClassVar[str] = ""
    # The runtime library this engine drives (e.g. "ONNX Runtime" for both optimum's loop and ONNX Runtime GenAI's):
    # the report compares the engines of one family with each other, so the path, not the runtime, shows
    family: ClassVar[str] = ""
    # device -> precisions this engine supports there; a device missing here is not supported at all.
    precisions: ClassVar[dict[str, tuple[str, ...]]] = {}
    # Phases beyond load/generate this engine has, declared (the runner and the orchestrator read this, they do not
    # detect overrides): "prepare" (a conversion into the cache, in its own container), "compile" (its own window).
    optional_phases: ClassVar[frozenset[str]] = frozenset()
    # None: the engine samples when the job asks (generation.sampling); else why it decodes greedily only
    greedy_only: ClassVar[str | None] = None
    # None: the engine spreads one model over the trial's GPUs when the job gives it several (job.gpus); else why it
    # runs a model on one GPU only
    multi_gpu: ClassVar[str | None] = "its engine code places the model on one device"
    # Python modules the engine's runtime library needs; Engine.unavailable finds them without importing them
    requires: ClassVar[tuple[str, ...]] = ()
    # engine_options this engine understands: a typed dataclass (runners/engines/options.py) that validates itself
    Options: ClassVar[type[Options]] = Options
    # name -> (type, one-line meaning), derived from Options: for help texts
    options: ClassVar[dict[str, tuple[type, str]]] = Options.described()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.options = cls.Options.described()

    def __init__(self, ctx: EngineContext, tokenizer: Any, options: Options):
        self.ctx = ctx
        self.tokenizer = tokenizer
        self.options = options
        self.model_dir, self.cache_dir = ctx.model_dir, ctx.cache_dir

    # --- validation ---------------------------------------------------------------------------------------------
    @classmethod
    def check_options(cls, options: dict[str, Any]) -> Options:
        """The job's engine_options as this engine's typed Options; JobError naming the field and the fix."""
        return cls.Options.parse(options, cls.name)

    @classmethod
    def check_gpus(cls, gpus: int, options: Options) -> None:
        """JobError naming ``gpus`` when this engine cannot spread a model over that many GPUs (never given them
        silently)."""
        if gpus > 1 and cls.multi_gpu:
            raise JobError("gpus", f"is {gpus} but engine {cls.name!r} runs a model on one GPU ({cls.multi_gpu})",
                           "set gpus = 1 for this engine, or use an engine that spreads a model over several GPUs")

    @classmethod
    def unavailable(cls, device: str) -> str | None:
        """Why this Python cannot run the engine on ``device`` (its library is not installed, no usable CUDA), else
        None. Cheap (modules are found, not imported), so a bare host can be surveyed before any job is written."""
        if device not in cls.precisions:
            return f"the {cls.name} engine does not run on {device}"
        missing = [m for m in cls.requires if not module_found(m)]
        if missing:
            return f"{', '.join(missing)} not installed"
        if device == "cuda":
            from runners.environment import cuda_problem

            return cuda_problem()
        return None

    def check_host(self) -> None:
        """Raise JobError when this host cannot run the job (e.g. CUDA asked, none visible)."""
        if self.ctx.device == "cuda":
            from runners.environment import cuda_problem

            problem = cuda_problem()
            if problem:
                raise JobError("device", f"cuda asked but {problem}",
                               "run cuda jobs on a host with an NVIDIA GPU (and the NVIDIA container runtime), "
                               "or set device to \"cpu\"")

    # --- phases ---------------------------------------------------------------------------------------------------
    def prepare(self, prompts: list) -> dict[str, Any]:
        """Convert the model for this runtime into the cache (outside any measured window). Idempotent. ``prompts``
        (the workload's, runners.workload.Prompt) let a converter check its own tokenizer against them.

        Returns facts for the record, at least {"cached": bool} (True: the conversion already existed)."""
        return {"cached": True, "artifact": str(self.model_dir), "conversion": "none"}

    def load(self, shape: Shape) -> None:
        """Load the prepared model for work of this shape: loading only (the load window measures it)."""
        raise NotImplementedError

    def compile(self, shape: Shape) -> dict[str, Any] | None:
        """The ahead-of-time step of an engine that declares "compile" (e.g. torch.compile), in its own window;
        returns facts for the record."""
        return None

    def generate(self, prompts: list[list[int]], max_new_tokens: int, ignore_eos: bool,
                 on_step: StepHook, stop: StopRule | None = None) -> list[list[int]]:
        """Greedy-generate for one batch; return the new token ids per prompt (exactly max_new_tokens each when
        ignore_eos). Call ``on_step()`` once per decode step. ``stop`` (as served only): a sequence also ends after
        the token at which the runner's stop rule (runners/stopping.py) first holds, that token included."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for queued device work (CUDA) so that a timestamp means the work is done."""

    def describe(self) -> dict[str, Any]:
        """What actually ran: provider, threads, batching mode, library versions, settings that change tokens."""
        return {}

    def close(self) -> None:
        pass

    # --- helpers ----------------------------------------------------------------------------------------------------
    def ends_on(self, ignore_eos: bool) -> frozenset[int]:
        """The ids a sequence of this call ends on: the runner's EOS set (ctx.eos_ids), none for fixed-length work."""
        return frozenset() if ignore_eos else self.ctx.eos_ids

    def threads(self) -> int:
        return int(self.options.threads or EngineContext.visible_cpus())
