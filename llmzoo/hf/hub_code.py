"""The remote-code files a checkpoint of a type transformers does not ship needs (chatglm, baichuan,
internlm2): `configuration_<type>.py` and `modeling_<type>.py` beside config.json, named by its
`auto_map` as the hub repos do, so `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`
opens the folder offline.

There is one source of truth: the modeling file is the in-repo reference module's own source, copied
verbatim (it imports torch only, so it stands alone), then the adapter's helper functions, then a
small `PreTrainedModel` wrapper whose parameters are the reference's (the checkpoint's names).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

# keys transformers 5's base config rewrites (rope_scaling is an alias of its rope_parameters there, and
# with rope_theta it is converted): the configuration class keeps them exactly as config.json states them
OWN_KEYS = ("rope_scaling", "rope_theta")

CONFIGURATION = '''"""{config_class}: config.json as {model_type}'s modeling file reads it (written by llmzoo)."""

from transformers import PretrainedConfig


class {config_class}(PretrainedConfig):
    model_type = "{model_type}"
    rope_scaling = None  # a plain key here (transformers' base class makes it an alias of rope_parameters)

    def __init__(self, **kwargs):
        own = {{k: kwargs.pop(k) for k in {own_keys!r} if k in kwargs}}  # kept as written
        super().__init__(**kwargs)
        for key, value in own.items():
            setattr(self, key, value)
'''

WRAPPER = '''

# ------------------------------------------------------------------ transformers wrapper (llmzoo)

from transformers import GenerationMixin, PreTrainedModel  # noqa: E402
from transformers.modeling_outputs import CausalLMOutputWithPast  # noqa: E402

from .configuration_{model_type} import {config_class}  # noqa: E402


class {architecture}(PreTrainedModel, GenerationMixin):
    """{reference_class} above as a transformers model: its sub-modules are this model's, so the
    parameter names are the checkpoint's; forward returns its logits (no KV cache)."""

    config_class = {config_class}
    _tied_weights_keys = {tied!r}
    _no_split_modules = []

    def __init__(self, config):
        super().__init__(config)
        c = config.to_dict()
        reference = {build}
        for name, child in reference.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "_reference", reference)  # shares the modules, not registered twice
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        logits = self._reference(input_ids, attention_mask)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size)
        return CausalLMOutputWithPast(loss=loss, logits=logits)
'''


@dataclass(frozen=True)
class HubCode:
    """How a remote-code adapter's reference becomes the hub repo's two files.

    module: the reference module, copied whole; reference_class: the class in it; build: the Python
    expression constructing it from `c` (the config.json dict); helpers: functions `build` calls,
    copied by source (e.g. the adapter's own config reading); architecture: config.json's
    `architectures` class; tied: `_tied_weights_keys` (applied only when tie_word_embeddings is true)."""

    module: ModuleType
    reference_class: str
    build: str
    architecture: str
    tied: dict[str, str] = field(default_factory=dict)
    helpers: tuple[Callable[..., Any], ...] = ()

    @property
    def config_class(self) -> str:
        return self.architecture.split("For")[0] + "Config"  # InternLM2ForCausalLM → InternLM2Config

    def files(self, model_type: str) -> dict[str, str]:
        """{file name: source} of configuration_<type>.py and modeling_<type>.py."""
        config_class = self.config_class
        modeling = [f"# {model_type}: llmzoo's reference ({self.module.__name__}) with a transformers wrapper.\n"
                    "# Written by llmzoo; the reference was written from the published modeling file.\n",
                    inspect.getsource(self.module)]
        modeling += ["\n\n" + inspect.getsource(f) for f in self.helpers]
        modeling.append(WRAPPER.format(model_type=model_type, config_class=config_class, architecture=self.architecture,
                                       reference_class=self.reference_class, tied=self.tied, build=self.build))
        return {f"configuration_{model_type}.py": CONFIGURATION.format(config_class=config_class, model_type=model_type,
                                                                       own_keys=OWN_KEYS),
                f"modeling_{model_type}.py": "".join(modeling)}

    def auto_map(self, model_type: str) -> dict[str, str]:
        return {"AutoConfig": f"configuration_{model_type}.{self.config_class}",
                "AutoModel": f"modeling_{model_type}.{self.architecture}",
                "AutoModelForCausalLM": f"modeling_{model_type}.{self.architecture}"}


def write_hub_code(folder: str | Path, model_type: str, code: HubCode) -> None:
    """Write the two files into `folder` and name them in its config.json (`auto_map`, `architectures`)."""
    folder = Path(folder)
    for name, text in code.files(model_type).items():
        (folder / name).write_text(text)
    path = folder / "config.json"
    hf = json.loads(path.read_text())
    hf.update(auto_map=code.auto_map(model_type), architectures=[code.architecture])
    path.write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
